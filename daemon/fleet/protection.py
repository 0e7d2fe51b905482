"""Scale-in protection (DESIGN §8): this instance is protected from scale-in while any worker on it runs a
job, so Auto Scaling never terminates an instance under a job.

- Any busy worker protects the instance: Auto Scaling removes whole instances, so one running job is
  enough; the instance is open to scale-in only when none of its workers is busy.
- Busy is a per-instance Redis sorted set, `worker name → expiry`, not a flag: a busy worker refreshes its
  entry, so one that crashes stops refreshing, its entry lapses within `BUSY_TTL_S`, and the next decision
  of any worker on the instance (each decides every `ttl_s / 4`, busy or not) drops the protection.
- AWS is called only on a change: the protection last set is recorded in Redis and compared under a
  per-instance lock, so N workers make one call per change between them and the last decision is the
  last call. A failed call leaves the record as it was, so the next call or tick tries again.
- Idle grace: a worker whose job ended counts as busy `IDLE_GRACE_S` longer (the next job starts at
  once; why this matters is at `IDLE_GRACE_S`).

Failures never reach the worker: AWS and Redis errors are logged once per outage (`Outage`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from ..adapters.aws import AWS_ERRORS, aws_client
from .identity import RELEASE, FleetIdentity, Outage, log_off

log = logging.getLogger(__name__)

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


class ScaleInProtection:
    """One worker's share of its instance's protection: `busy()` when a job starts, `idle()` when it
    ends, `stop()` when the worker leaves. A thread refreshes the entry while busy and decides again
    every `ttl_s / 4`. The wanted protection is "some entry of the instance has not expired"."""

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
        self._redis_outage = Outage("scale-in protection: Redis")
        self._aws_outage = Outage(f"scale-in protection of {identity.instance_id}: AWS")
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
            log_off(self.identity, "scale-in protection off: no instance id or Auto Scaling group known")
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
        """A job starts: the instance is protected when this returns, unless AWS or Redis failed."""
        self._mark(busy=True)

    def idle(self) -> None:
        """The job ended: once `idle_grace_s` passes without `busy()`, the refresh thread unprotects the
        instance if no other worker is busy (at once with a grace of 0)."""
        self._mark(busy=False, grace_s=self.idle_grace_s)

    def reconcile(self) -> bool | None:
        """Set the protection the instance's live entries call for, if not already set. Returns it, None
        when off or failed."""
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
            self.redis.eval(RELEASE, 1, key, token)

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
