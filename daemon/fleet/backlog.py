"""The backlog metric the fleet's Auto Scaling group scales on (DESIGN §8): `BacklogPublisher`, a thread
of every worker parent; the worker holding the group's lease puts `Backlog` (per priority),
`BacklogTotal` and `BacklogPerInstance` to CloudWatch. Who this instance is and which group it is in
comes from `identity.py`; scale-in protection is in `protection.py`.

Backlog = jobs waiting in an rq queue (its list, `Queue.count`). Not counted: started jobs (they have an
instance), scheduled jobs (retries waiting out their backoff, `enqueue_at`) and deferred jobs (waiting for
a dependency): none can run now, and a scheduled job is counted the moment rq moves it to its queue.
Counting them would buy instances that sit idle until the job is due.

BacklogPerInstance = BacklogTotal / max(1, InService instances). With no instance in service and jobs
waiting it is BacklogTotal, "as if one instance": what one new instance would face, so the policy sees
waiting work instead of a division by zero. (A group at 0 has no worker to publish it: the README says
how to scale out from zero.)

Failures never reach the worker: they are logged once per outage (`Outage`) and the next tick tries
again.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from ..adapters.aws import AWS_ERRORS, aws_client
from ..config import DEFAULT_CLOUDWATCH_NAMESPACE
from ..spec.model import PRIORITIES
from .identity import RELEASE, FleetIdentity, Outage, log_off

log = logging.getLogger(__name__)

PUBLISH_INTERVAL_S = 60.0
"""CloudWatch's standard resolution is one minute and target tracking alarms evaluate per minute."""

LEASE_PREFIX = "daemon:fleet:publisher:"
"""String per Auto Scaling group: the token of the worker that publishes its backlog."""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


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
    """Jobs waiting in each rq queue (the length of its list, what `Queue.count` reads), in one round
    trip. Only the key of rq's list is needed, so no serializer or job class: the fleet knows nothing
    of the worker's queue setup."""
    with redis.pipeline(transaction=False) as pipe:
        for name in queues:
            pipe.llen(Queue(name, connection=redis).key)
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
        namespace: str = DEFAULT_CLOUDWATCH_NAMESPACE,
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
