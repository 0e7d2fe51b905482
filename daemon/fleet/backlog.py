"""The fleet's side of EC2 Auto Scaling (DESIGN §8): who this instance is, and the backlog metric the group
scales on. Scale-in protection, which shares the identity and helpers here, is in `protection.py`.

- `FleetIdentity`: this instance's id, region and Auto Scaling group, read once from IMDS (the group
  from the instance tag `aws:autoscaling:groupName`, which IMDS serves only when the launch template
  sets `InstanceMetadataTags=enabled`), each overridable by a setting.
- `BacklogPublisher`: a thread of every worker parent; the worker holding the group's lease puts
  `Backlog` (per priority), `BacklogTotal` and `BacklogPerInstance` to CloudWatch.

Backlog = jobs waiting in an rq queue (its list, `Queue.count`). Not counted: started jobs (they have an
instance), scheduled jobs (retries waiting out their backoff, `enqueue_at`) and deferred jobs (waiting for
a dependency): none can run now, and a scheduled job is counted the moment rq moves it to its queue.
Counting them would buy instances that sit idle until the job is due.

BacklogPerInstance = BacklogTotal / max(1, InService instances). With no instance in service and jobs
waiting it is BacklogTotal, "as if one instance": what one new instance would face, so the policy sees
waiting work instead of a division by zero. (A group at 0 has no worker to publish it: the README says
how to scale out from zero.)

Failures never reach the worker: they are logged once per outage (`Outage`) and the next tick or call
tries again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config
from redis import Redis
from redis.exceptions import RedisError

from ..worker.queue import PRIORITIES, make_queue
from .spot import MetadataClient, MetadataUnavailable

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "CaptureDaemon"
"""CloudWatch namespace of our metrics (CLOUDWATCH_NAMESPACE); the scaling policy names it too."""

INSTANCE_ID_PATH = "instance-id"
REGION_PATH = "placement/region"
GROUP_TAG_PATH = "tags/instance/aws:autoscaling:groupName"
"""Auto Scaling tags its instances with their group; IMDS serves tags only with
InstanceMetadataTags=enabled in the launch template's metadata options."""

PUBLISH_INTERVAL_S = 60.0
"""CloudWatch's standard resolution is one minute and target tracking alarms evaluate per minute."""

LEASE_PREFIX = "daemon:fleet:publisher:"
"""String per Auto Scaling group: the token of the worker that publishes its backlog."""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Compare-and-delete (KEYS[1], token): frees a lease or lock only while the caller still holds it."""

AWS_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError)
"""What a boto3 call can raise: service answers, client-side failures (no region, no credentials)."""


def aws_client(
    service: str,
    region: str | None,
    *,
    endpoint_url: str | None = None,
    max_attempts: int = 2,
    connect_timeout_s: float = 3.0,
    read_timeout_s: float = 5.0,
) -> Any:
    """A boto3 client with short timeouts: these calls are small and retried on the next tick anyway.
    Credentials and, when `region` is None, the region come from boto3's chain (instance profile)."""
    config = Config(
        region_name=region,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
    )
    return boto3.session.Session().client(service, endpoint_url=endpoint_url, config=config)


class Outage:
    """One warning when a dependency starts failing, one info line when it answers again."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None  # time.monotonic()

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s failed, retrying every tick: %s", self.what, exc)
        else:
            log.debug("%s still failing: %s", self.what, exc)

    def ok(self) -> None:
        if self.since is not None:
            log.info("%s works again after %.0f s", self.what, time.monotonic() - self.since)
            self.since = None


# -- identity --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetIdentity:
    """Who this worker is in the fleet. `off_reason` says why the features are off when discovery
    already logged it (so they don't repeat it)."""

    instance_id: str | None = None
    region: str | None = None
    asg_name: str | None = None
    off_reason: str | None = field(default=None, compare=False)

    @classmethod
    def discover(
        cls,
        metadata: MetadataClient | None,
        *,
        asg_name: str | None = None,
        region: str | None = None,
        instance_id: str | None = None,
        default_region: str | None = None,
    ) -> FleetIdentity:
        """Read what IMDS knows; explicit values win, `default_region` (AWS_REGION, which may be the
        bucket's) only fills in when IMDS does not say. Logs one info line. Never raises.

        Off EC2 (no IMDS, or `metadata` None) only explicit values are used: with AUTOSCALING_GROUP set
        the backlog is still published (a host outside the group can publish it, which is what lets
        the group scale out from zero); scale-in protection needs an instance, so it is off."""
        found: dict[str, str | None] = {"instance_id": None, "region": None, "asg_name": None}
        off_ec2: str | None = None
        if metadata is None:
            off_ec2 = "IMDS_URL is empty"
        else:
            try:
                found["instance_id"] = metadata.get(INSTANCE_ID_PATH)
                found["region"] = metadata.get(REGION_PATH)
                found["asg_name"] = metadata.get(GROUP_TAG_PATH)
            except MetadataUnavailable as exc:
                if found["instance_id"] is None:
                    off_ec2 = f"no instance metadata at {metadata.base_url}: {exc}"
                else:
                    log.warning("instance metadata incomplete (%s): using what was read", exc)
            except Exception as exc:  # a bug must not stop the worker from starting
                log.exception("instance metadata unreadable")
                off_ec2 = f"instance metadata unreadable: {exc}"
            if off_ec2 is None and not _clean(found["instance_id"]):
                off_ec2 = f"{metadata.base_url} serves no instance-id"
        identity = cls(
            instance_id=instance_id or _clean(found["instance_id"]),
            region=region or _clean(found["region"]) or default_region,
            asg_name=asg_name or _clean(found["asg_name"]),
        )
        reason = identity._describe(off_ec2)
        log.info("fleet: %s", reason)
        return identity if identity.asg_name and identity.instance_id else _with_reason(identity, reason)

    def _describe(self, off_ec2: str | None) -> str:
        if off_ec2 and not self.asg_name:
            return f"not on EC2 ({off_ec2}): backlog metrics and scale-in protection off"
        if off_ec2:
            return (
                f"not on EC2 ({off_ec2}): scale-in protection off; backlog of group {self.asg_name} "
                f"published (AUTOSCALING_GROUP set)"
            )
        if not self.asg_name:
            return (
                f"instance {self.instance_id} is in no Auto Scaling group we know of (no instance tag "
                f"aws:autoscaling:groupName: InstanceMetadataTags disabled? or set AUTOSCALING_GROUP): "
                f"backlog metrics and scale-in protection off"
            )
        return f"instance {self.instance_id} in group {self.asg_name}, region {self.region or 'from boto3'}"


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip() or None


def _with_reason(identity: FleetIdentity, reason: str) -> FleetIdentity:
    return FleetIdentity(identity.instance_id, identity.region, identity.asg_name, off_reason=reason)


def log_off(identity: FleetIdentity, message: str) -> None:
    """Say a feature is off: at debug when discovery already said why, else (a hand-made identity) info."""
    log.log(logging.DEBUG if identity.off_reason else logging.INFO, message)


# -- backlog ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """One measurement: waiting jobs per queue and the group's InService instances."""

    per_priority: Mapping[str, int]
    in_service: int

    @property
    def total(self) -> int:
        return sum(self.per_priority.values())

    @property
    def per_instance(self) -> float:
        """BacklogPerInstance (see the module docstring)."""
        return self.total / max(1, self.in_service)


def queue_depths(redis: Redis, queues: Sequence[str]) -> dict[str, int]:
    """Jobs waiting in each rq queue (the length of its list), read in one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        for name in queues:
            pipe.llen(make_queue(name, redis).key)
        return {name: int(n) for name, n in zip(queues, pipe.execute(), strict=True)}


class BacklogPublisher:
    """Publishes the group's backlog to CloudWatch every `interval_s`, from whichever worker holds the
    group's lease: `SET NX PX lease_ttl_s` to take it, compare-and-extend each tick to keep it,
    compare-and-delete on `stop()`. A holder that dies is replaced within `lease_ttl_s` + `interval_s`;
    one that stops, within `interval_s`.

    Clients are built on first use from `identity.region` unless given (tests pass moto's)."""

    def __init__(
        self,
        redis: Redis,
        identity: FleetIdentity,
        *,
        queues: Sequence[str] = PRIORITIES,
        namespace: str = DEFAULT_NAMESPACE,
        interval_s: float = PUBLISH_INTERVAL_S,
        lease_ttl_s: float | None = None,
        owner: str = "",
        autoscaling: Any = None,
        cloudwatch: Any = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.redis = redis
        self.identity = identity
        self.queues = tuple(queues)
        self.namespace = namespace
        self.interval_s = interval_s
        # Two missed renewals before another worker takes over: a slow tick does not hand the lease over.
        self.lease_ttl_s = lease_ttl_s if lease_ttl_s is not None else 2 * interval_s + 10
        if self.lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be positive, not {self.lease_ttl_s}")
        self.token = f"{owner or 'publisher'}:{uuid.uuid4().hex}"
        self.autoscaling = autoscaling
        self.cloudwatch = cloudwatch
        self.holding = False
        self.published = 0  # successful put_metric_data calls
        self.last: Backlog | None = None
        self._redis_outage = Outage("backlog metrics: Redis")
        self._aws_outage = Outage(f"backlog metrics of group {identity.asg_name}: AWS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backlog-publisher", daemon=True)

    @property
    def enabled(self) -> bool:
        return bool(self.identity.asg_name)

    @property
    def lease_key(self) -> str:
        return LEASE_PREFIX + (self.identity.asg_name or "")

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> BacklogPublisher:
        if not self.enabled:
            log_off(self.identity, "backlog metrics not published: no Auto Scaling group known")
            return self
        log.info(
            "backlog of %s for group %s: published every %g s by the lease holder",
            ",".join(self.queues),
            self.identity.asg_name,
            self.interval_s,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """End the thread and hand the lease over (another worker takes it at its next tick)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.holding:
            try:
                self.redis.eval(RELEASE, 1, self.lease_key, self.token)
                log.info("backlog publisher lease of group %s released", self.identity.asg_name)
            except RedisError as exc:  # it lapses by itself within lease_ttl_s
                log.warning(
                    "backlog publisher lease not released (lapses in %g s): %s", self.lease_ttl_s, exc
                )
            self.holding = False

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # -- one tick --------------------------------------------------------------------------------------

    def publish_once(self) -> Backlog | None:
        """Take or keep the lease and, if held, measure and publish. Returns what was published, None
        when another worker holds the lease, publishing is off, or something failed (logged)."""
        if not self.enabled:
            return None
        try:
            if not self._hold_lease():
                return None
            depths = queue_depths(self.redis, self.queues)
        except RedisError as exc:
            self._redis_outage.failed(exc)
            return None
        self._redis_outage.ok()
        try:
            backlog = Backlog(depths, self._in_service())
            self._put(backlog)
        except AWS_ERRORS as exc:
            self._aws_outage.failed(exc)
            return None
        self._aws_outage.ok()
        self.published += 1
        self.last = backlog
        log.debug(
            "backlog %s: %d waiting (%s), %d in service, %.2f per instance",
            self.identity.asg_name,
            backlog.total,
            " ".join(f"{q}={n}" for q, n in backlog.per_priority.items()),
            backlog.in_service,
            backlog.per_instance,
        )
        return backlog

    def _hold_lease(self) -> bool:
        ttl_ms = max(1, int(self.lease_ttl_s * 1000))
        if self.holding:
            if self.redis.eval(_EXTEND, 1, self.lease_key, self.token, ttl_ms):
                return True
            self.holding = False
            log.info("backlog publisher lease of group %s lost to another worker", self.identity.asg_name)
        if self.redis.set(self.lease_key, self.token, nx=True, px=ttl_ms):
            self.holding = True
            log.info(
                "backlog publisher lease of group %s taken: this worker publishes", self.identity.asg_name
            )
        return self.holding

    def _in_service(self) -> int:
        if self.autoscaling is None:
            self.autoscaling = aws_client("autoscaling", self.identity.region)
        groups = self.autoscaling.describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.identity.asg_name]
        )["AutoScalingGroups"]
        if not groups:
            raise _GroupNotFound(f"no Auto Scaling group named {self.identity.asg_name!r}")
        return sum(1 for i in groups[0].get("Instances", []) if i.get("LifecycleState") == "InService")

    def _put(self, backlog: Backlog) -> None:
        if self.cloudwatch is None:
            self.cloudwatch = aws_client("cloudwatch", self.identity.region)
        group = {"Name": "AutoScalingGroupName", "Value": self.identity.asg_name}
        now = datetime.now(UTC)

        def datum(name: str, value: float, *extra: dict[str, Any]) -> dict[str, Any]:
            return {
                "MetricName": name,
                "Dimensions": [group, *extra],
                "Value": float(value),
                "Unit": "Count",
                "Timestamp": now,
            }

        data = [
            datum("Backlog", n, {"Name": "Priority", "Value": q}) for q, n in backlog.per_priority.items()
        ]
        data.append(datum("BacklogTotal", backlog.total))
        data.append(datum("BacklogPerInstance", backlog.per_instance))
        self.cloudwatch.put_metric_data(Namespace=self.namespace, MetricData=data)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish_once()
            except Exception:  # a bug must not end the thread silently, nor reach the worker
                log.exception("backlog publisher tick failed")
            self._stop.wait(self.interval_s)


class _GroupNotFound(OSError):  # noqa: N818 - reads as what happened
    """AUTOSCALING_GROUP names no group (a typo, another region): reported like an AWS failure."""
