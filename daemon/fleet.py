"""The fleet's side of EC2 Auto Scaling (DESIGN §8): the backlog metric it scales on, and scale-in
protection of instances that are running a job.

- `FleetIdentity`: this instance's id, region and Auto Scaling group, read once from IMDS (the group
  from the instance tag `aws:autoscaling:groupName`, which IMDS serves only when the launch template
  sets `InstanceMetadataTags=enabled`), each overridable by a setting.
- `BacklogPublisher`: a thread of every worker parent; the one holding the group's Redis lease puts
  `Backlog` (per priority), `BacklogTotal` and `BacklogPerInstance` to CloudWatch every `interval_s`.
- `ScaleInProtection`: `busy()` when a job starts, `idle()` when it ends; the instance is protected from
  scale-in while any worker on it is busy, and for a short grace after (the next job starts at once).

Backlog = jobs waiting in an rq queue (its list, `Queue.count`). Not counted: started jobs (they have an
instance), scheduled jobs (retries waiting out their backoff, `enqueue_at`) and deferred jobs (waiting for
a dependency): none can run now, and a scheduled job is counted the moment rq moves it to its queue.
Counting them would buy instances that sit idle until the job is due.

BacklogPerInstance = BacklogTotal / max(1, InService instances). With no instance in service and jobs
waiting it is BacklogTotal, "as if one instance": what one new instance would face, so the policy sees
waiting work instead of a division by zero. (A group at 0 has no worker to publish it: the README says
how to scale out from zero.)

Failures never reach the worker: an AWS or Redis error is one warning when it starts, one info line when
it passes, and the next tick or call tries again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config
from redis import Redis
from redis.exceptions import RedisError

from .queue import PRIORITIES, make_queue
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

BUSY_PREFIX = "daemon:fleet:busy:"
"""Sorted set per instance id: worker name → unix ms until which it counts as busy."""

PROTECTED_PREFIX = "daemon:fleet:protected:"
"""String per instance id: the protection ("1"/"0") last set in AWS by any of its workers."""

PROTECTION_LOCK_PREFIX = "daemon:fleet:protection-lock:"
"""String per instance id: held while one worker decides and sets the instance's protection, so two
workers' AWS calls cannot land in the opposite order of their decisions."""

BUSY_TTL_S = 120.0
"""A busy entry lives this long unless refreshed (every quarter of it): a crashed worker's entry lapses
and the instance stops being protected for it within about two minutes."""

PROTECTED_REASSERT_S = 3600.0
"""The recorded protection is forgotten after an hour, so it is set again in AWS even if someone changed
it by hand: one AWS call per instance per hour."""

IDLE_GRACE_S = 10.0
"""After its job ends a worker counts as busy this much longer: rq takes the next job within
milliseconds, and unprotecting in between would let a pending scale-in (desired capacity already
lowered while every instance was protected) terminate the instance under that next job."""

LOCK_TTL_S = 30.0
"""Longer than one protection call can take with `aws_client`'s timeouts and attempts."""

LOCK_WAIT_S = 10.0
"""How long `busy()`/`idle()` wait for another worker of the instance to finish its protection call."""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

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


class _Outage:
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


def _log_off(identity: FleetIdentity, message: str) -> None:
    # Discovery already said why in one line; a hand-made identity gets its one line here.
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
        """total / InService instances; at zero instances the total, as if there were one."""
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
        self._redis_outage = _Outage("backlog metrics: Redis")
        self._aws_outage = _Outage(f"backlog metrics of group {identity.asg_name}: AWS")
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
            _log_off(self.identity, "backlog metrics not published: no Auto Scaling group known")
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
                self.redis.eval(_RELEASE, 1, self.lease_key, self.token)
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


# -- scale-in protection ---------------------------------------------------------------------------------


class ScaleInProtection:
    """Protects the instance from scale-in while any of its workers runs a job.

    Each worker keeps an entry `worker name → expiry` in the instance's sorted set while busy, refreshed
    by a thread every `ttl_s / 4`; `idle()` lets it expire `idle_grace_s` later. The wanted protection
    is "some entry has not expired"; it is set in AWS only when it differs from what was last set
    (recorded in Redis), under a per-instance lock, so N workers make one call per change between them
    and the last decision is the last call. A worker that crashes stops refreshing: its entry expires
    and the next decision of any worker on the instance (each thread decides every `ttl_s / 4`, busy or
    not) drops the protection. A failed AWS call leaves the record as it was, so the next call or tick
    tries again.
    """

    def __init__(
        self,
        redis: Redis,
        identity: FleetIdentity,
        *,
        worker_name: str,
        ttl_s: float = BUSY_TTL_S,
        idle_grace_s: float = IDLE_GRACE_S,
        autoscaling: Any = None,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> None:
        if ttl_s <= 0 or not 0 <= idle_grace_s < ttl_s:
            raise ValueError(f"need ttl_s > idle_grace_s >= 0, not {ttl_s} and {idle_grace_s}")
        self.redis = redis
        self.identity = identity
        self.worker_name = worker_name
        self.ttl_s = ttl_s
        self.autoscaling = autoscaling
        self.idle_grace_s = idle_grace_s
        self.lock_wait_s = lock_wait_s
        self.is_busy = False
        self._settle_at: float | None = None  # time.monotonic() when an idle() grace ends
        self.calls = 0  # successful set_instance_protection calls by this worker
        self._local = threading.Lock()  # the worker's main thread and the refresh thread
        self._redis_outage = _Outage("scale-in protection: Redis")
        self._aws_outage = _Outage(f"scale-in protection of {identity.instance_id}: AWS")
        self._stopping = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scale-in-protection", daemon=True)

    @property
    def enabled(self) -> bool:
        return bool(self.identity.instance_id and self.identity.asg_name)

    @property
    def busy_key(self) -> str:
        return BUSY_PREFIX + (self.identity.instance_id or "")

    # -- what the worker calls -------------------------------------------------------------------------

    def start(self) -> ScaleInProtection:
        if not self.enabled:
            _log_off(self.identity, "scale-in protection off: no instance id or Auto Scaling group known")
            return self
        log.info(
            "scale-in protection of %s in group %s: on while a job runs",
            self.identity.instance_id,
            self.identity.asg_name,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """End the refresh thread and leave as idle at once (the worker's job, if any, was requeued)."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._mark(busy=False, grace_s=0.0)

    def busy(self) -> None:
        """A job starts on this worker: the instance is protected when this returns (unless AWS or
        Redis failed, which is logged). Never raises."""
        self._mark(busy=True)

    def idle(self) -> None:
        """This worker's job ended: once `idle_grace_s` has passed without `busy()`, the refresh thread
        unprotects the instance if no other worker is busy (at once with a grace of 0). Never raises."""
        self._mark(busy=False, grace_s=self.idle_grace_s)

    def reconcile(self) -> bool | None:
        """Set the protection the instance's live entries call for, if not already set. Returns it
        (None when off or failed). Never raises."""
        if not self.enabled:
            return None
        with self._local:
            return self._guarded(self._reconcile)

    # -- internals -------------------------------------------------------------------------------------

    def _mark(self, *, busy: bool, grace_s: float = 0.0) -> None:
        if not self.enabled:
            return
        with self._local:
            self.is_busy = busy
            self._settle_at = time.monotonic() + grace_s if grace_s > 0 else None
            self._guarded(lambda: self._write_entry(grace_s))
            if busy or grace_s <= 0:
                self._guarded(self._reconcile)
        self._wake.set()  # the thread's next wake-up follows the new grace

    def _guarded(self, step: Any) -> Any:
        try:
            result = step()
        except RedisError as exc:
            self._redis_outage.failed(exc)
            return None
        except Exception:  # a bug must not reach the worker's job loop
            log.exception("scale-in protection failed")
            return None
        self._redis_outage.ok()
        return result

    def _write_entry(self, grace_s: float = 0.0) -> None:
        """Busy: expires in ttl_s. Idle: expires after the grace, or is removed now."""
        now_ms = int(time.time() * 1000)
        ttl_ms = max(1, int(self.ttl_s * 1000))
        with self.redis.pipeline() as pipe:
            pipe.zremrangebyscore(self.busy_key, "-inf", now_ms)
            if self.is_busy or grace_s > 0:
                until_ms = now_ms + (ttl_ms if self.is_busy else int(grace_s * 1000))
                pipe.zadd(self.busy_key, {self.worker_name: until_ms})
                pipe.pexpire(self.busy_key, ttl_ms)  # gone with its last live worker
            else:
                pipe.zrem(self.busy_key, self.worker_name)
            pipe.execute()

    def _reconcile(self) -> bool | None:
        instance = self.identity.instance_id or ""
        with self._instance_lock() as held:
            if not held:
                log.warning(
                    "scale-in protection: lock of %s busy for %g s; next tick", instance, self.lock_wait_s
                )
                return None
            with self.redis.pipeline() as pipe:
                pipe.zremrangebyscore(self.busy_key, "-inf", int(time.time() * 1000))
                pipe.zcard(self.busy_key)
                pipe.get(PROTECTED_PREFIX + instance)
                _, live, recorded = pipe.execute()
            wanted = int(live) > 0
            if recorded is not None and (recorded in (b"1", "1")) == wanted:
                return wanted
            try:
                if self.autoscaling is None:
                    self.autoscaling = aws_client("autoscaling", self.identity.region)
                self.autoscaling.set_instance_protection(
                    InstanceIds=[instance],
                    AutoScalingGroupName=self.identity.asg_name,
                    ProtectedFromScaleIn=wanted,
                )
            except AWS_ERRORS as exc:
                self._aws_outage.failed(exc)
                return None
            self._aws_outage.ok()
            self.calls += 1
            self.redis.set(
                PROTECTED_PREFIX + instance, "1" if wanted else "0", px=int(PROTECTED_REASSERT_S * 1000)
            )
            log.info(
                "instance %s %s scale-in (%d busy worker%s)",
                instance,
                "protected from" if wanted else "open to",
                int(live),
                "" if int(live) == 1 else "s",
            )
            return wanted

    @contextmanager
    def _instance_lock(self) -> Iterator[bool]:
        key = PROTECTION_LOCK_PREFIX + (self.identity.instance_id or "")
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_wait_s
        while not self.redis.set(key, token, nx=True, px=int(LOCK_TTL_S * 1000)):
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(0.05)
        try:
            yield True
        finally:
            self.redis.eval(_RELEASE, 1, key, token)

    def _run(self) -> None:
        # At once first: a worker (re)started on an instance left protected by a crashed one corrects it.
        while not self._stopping:
            self._wake.clear()
            try:
                with self._local:
                    if self.is_busy:
                        self._guarded(self._write_entry)
                    if self._settle_at is not None and time.monotonic() >= self._settle_at:
                        self._settle_at = None
                    self._guarded(self._reconcile)
            except Exception:  # a bug must not end the thread silently
                log.exception("scale-in protection refresh failed")
            self._wake.wait(self._next_wait())

    def _next_wait(self) -> float:
        wait = self.ttl_s / 4
        settle_at = self._settle_at
        if settle_at is not None:  # just after the idle grace's entry has expired
            wait = min(wait, max(0.0, settle_at - time.monotonic()) + 0.05)
        return wait
