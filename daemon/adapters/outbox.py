"""The outbox: effects that must happen even if the service they go to is down right now.

Callbacks and row writes that could not be delivered on the spot are kept in Redis and delivered by
the worker's drainer thread, with exponential backoff and jitter, until they land or grow too old.
Keeping them in Redis rather than in the process means they survive the work-horse exiting and even
the instance vanishing: any worker of the fleet drains the same outbox.

Claiming uses a lease: a claimed item's due time moves `lease_s` into the future, so an item whose
deliverer died is delivered again later (at-least-once; receivers dedupe on webhook-id).

Items are not trusted as read: anyone who can write to Redis (the web app enqueues jobs there) could
otherwise have a worker sign and send a callback anywhere, or upsert any row with the service-role key.
Each envelope carries an HMAC under a key derived from the daemon's own secrets (`outbox_key`), and is
checked on claim for its shape (kind, a valid job id, a callback's fields); an item failing either is
logged and dropped, never delivered.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis as redis_lib
from redis import Redis

from ..spec.fields import is_job_id

log = logging.getLogger(__name__)

DUE_KEY = "daemon:outbox:due"
"""Sorted set: item id → unix time when it is next due."""

ITEM_PREFIX = "daemon:outbox:item:"
"""String per item: its JSON envelope."""

LEASE_S = 60.0
"""A claimed item becomes due again after this long unless its deliverer finished with it."""

_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""

_FINISH_IF_UNCHANGED = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


KINDS = ("row", "callback")

KEY_INFO = b"capture-daemon outbox v1"


def outbox_key(*secrets: str | None) -> bytes | None:
    """The key items are authenticated with, derived from the first secret configured (the callback
    secret, then the Supabase service-role key): every daemon process has it, a Redis client such as
    the web app need not. None when there is no secret (local use): items are then only checked."""
    secret = next((s for s in secrets if s), None)
    return hmac.new(secret.encode(), KEY_INFO, hashlib.sha256).digest() if secret else None


def _mac(key: bytes, item_id: str, kind: str, data: Any, created: float, version: str) -> str:
    signed = json.dumps([item_id, kind, data, created, version], sort_keys=True, separators=(",", ":"))
    return hmac.new(key, signed.encode(), hashlib.sha256).hexdigest()


def _shape_problem(item_id: str, env: Any) -> str | None:
    """Why an envelope cannot be one of ours, or None."""
    if not isinstance(env, dict) or env.get("kind") not in KINDS or not isinstance(env.get("data"), dict):
        return "not an outbox envelope"
    if not isinstance(env.get("created"), int | float) or not isinstance(env.get("tries"), int):
        return "not an outbox envelope"
    kind, data = env["kind"], env["data"]
    if not item_id.startswith(f"{kind}:"):
        return f"id {item_id!r} does not match kind {kind!r}"
    if kind == "row" and not (is_job_id(data.get("id")) and item_id == f"row:{data['id']}"):
        return "a row without a valid job id"
    if kind == "callback":
        if not is_job_id(data.get("job_id")) or not str(data.get("type", "")).startswith("job."):
            return "a callback without a valid job id or event type"
        if not all(isinstance(data.get(f), str) for f in ("url", "body")):
            return "a callback without its url and body"
    return None


@dataclass(frozen=True)
class OutboxItem:
    item_id: str
    kind: str  # "row" | "callback"
    data: dict[str, Any]
    created: float
    tries: int
    raw: str  # the envelope as stored, to finish only the version we delivered


@dataclass(frozen=True)
class Delivery:
    """What a sink reports for one item."""

    ok: bool
    retryable: bool = True
    error: str | None = None
    retry_after_s: float | None = None  # the receiver's own "come back in" (Retry-After), if any


Sink = Callable[[OutboxItem], Delivery]


class Outbox:
    def __init__(
        self,
        redis: Redis,
        *,
        max_age_s: float,
        base_delay_s: float = 2.0,
        cap_s: float = 300.0,
        key: bytes | None = None,
    ) -> None:
        self.redis = redis
        self.key = key
        self.max_age_s = max_age_s
        self.base_delay_s = base_delay_s
        self.cap_s = cap_s
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH_IF_UNCHANGED)

    # -- producing -------------------------------------------------------------------------------

    def put_callback(self, event_data: Mapping[str, Any], *, webhook_id: str) -> None:
        self._put(f"callback:{webhook_id}", "callback", dict(event_data))

    def put_row(self, row: Mapping[str, Any]) -> None:
        """Queue a row write; merges with a row for the same job still waiting (latest field wins)."""
        item_id = f"row:{row['id']}"
        key = ITEM_PREFIX + item_id
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current = pipe.get(key)
                    merged = dict(row)
                    if current is not None:
                        old = json.loads(current)["data"]
                        if int(old.get("attempt", 0)) <= int(row.get("attempt", 0)):
                            merged = {**old, **row}
                        else:
                            merged = old  # a newer attempt's row is waiting: this one is stale
                    pipe.multi()
                    self._put(item_id, "row", merged, pipe=pipe)
                    pipe.execute()
                    return
                except redis_lib.WatchError:
                    continue

    def _put(self, item_id: str, kind: str, data: dict[str, Any], *, pipe: Any = None) -> None:
        env: dict[str, Any] = {
            "kind": kind, "data": data, "created": time.time(), "tries": 0, "v": uuid.uuid4().hex
        }  # fmt: skip
        if self.key is not None:
            env["mac"] = _mac(self.key, item_id, kind, data, env["created"], env["v"])
        envelope = json.dumps(env, sort_keys=True)
        target = pipe if pipe is not None else self.redis.pipeline()
        target.set(ITEM_PREFIX + item_id, envelope)
        target.zadd(DUE_KEY, {item_id: time.time()})
        if pipe is None:
            target.execute()

    # -- draining --------------------------------------------------------------------------------

    def claim_due(self, limit: int = 20, now: float | None = None) -> list[OutboxItem]:
        now = time.time() if now is None else now
        ids = self._claim(keys=[DUE_KEY], args=[now, now + LEASE_S, limit])
        items = []
        for raw_id in ids:
            item_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            raw = self.redis.get(ITEM_PREFIX + item_id)
            if raw is None:
                self.redis.zrem(DUE_KEY, item_id)
                continue
            raw = raw.decode() if isinstance(raw, bytes) else raw
            env, problem = self._check(item_id, raw)
            if problem is not None:
                log.error("outbox: dropping item %s, never delivering it: %s", item_id, problem)
                self._drop(item_id)
                continue
            items.append(OutboxItem(item_id, env["kind"], env["data"], env["created"], env["tries"], raw))
        return items

    def _check(self, item_id: str, raw: str) -> tuple[Any, str | None]:
        try:
            env = json.loads(raw)
        except ValueError:
            return None, "not JSON"
        problem = _shape_problem(item_id, env)
        if problem is None and self.key is not None:
            expected = _mac(self.key, item_id, env["kind"], env["data"], env["created"], str(env.get("v")))
            if not hmac.compare_digest(str(env.get("mac", "")), expected):
                problem = "not written by this daemon (no valid HMAC)"
        return env, problem

    def _drop(self, item_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(ITEM_PREFIX + item_id)
            pipe.zrem(DUE_KEY, item_id)
            pipe.execute()

    def finish(self, item: OutboxItem) -> bool:
        """Remove a delivered item, unless a newer version replaced it meanwhile (then it stays due)."""
        return bool(self._finish(keys=[DUE_KEY, ITEM_PREFIX + item.item_id], args=[item.raw, item.item_id]))

    def retry_later(self, item: OutboxItem, delay_s: float) -> None:
        env = json.loads(item.raw)
        env["tries"] = item.tries + 1
        with self.redis.pipeline() as pipe:
            pipe.watch(ITEM_PREFIX + item.item_id)
            if pipe.get(ITEM_PREFIX + item.item_id) != item.raw.encode():
                pipe.reset()  # replaced by a newer version, which is already due
                return
            pipe.multi()
            pipe.set(ITEM_PREFIX + item.item_id, json.dumps(env, sort_keys=True))
            pipe.zadd(DUE_KEY, {item.item_id: time.time() + delay_s})
            with contextlib.suppress(redis_lib.WatchError):
                pipe.execute()

    def release(self, items: list[OutboxItem], after_s: float) -> None:
        """Give claimed items back, due again in `after_s` (their lane is busy): no try is counted."""
        # Microseconds apart, in the order given (claim order): equal scores would come back sorted by
        # id, and a lane's callbacks must keep their order.
        due = time.time() + after_s
        if items:
            self.redis.zadd(DUE_KEY, {item.item_id: due + i * 1e-6 for i, item in enumerate(items)}, xx=True)

    def pending(self) -> int:
        return int(self.redis.zcard(DUE_KEY))

    @staticmethod
    def _deliver(sinks: Mapping[str, Sink], item: OutboxItem) -> Delivery:
        try:
            return sinks[item.kind](item)
        except Exception as exc:  # one bad item must not stall the batch behind it
            log.exception("outbox: delivering %s raised", item.item_id)
            return Delivery(ok=False, retryable=True, error=f"{type(exc).__name__}: {exc}")

    def drain_once(
        self,
        sinks: Mapping[str, Sink],
        *,
        delay: Callable[[int], float],
        now: float | None = None,
        lane: Callable[[OutboxItem], str] = lambda item: item.kind,
        max_lanes: int = 8,
    ) -> int:
        """Deliver every due item once; returns how many landed. An item of a kind this drainer has no
        sink for stays leased and untouched, for a worker that has one (a worker without
        CALLBACK_SECRET must not drop the fleet's callbacks). Items go out in lanes (for callbacks, one
        per receiving host), lanes side by side and each lane in order: a slow receiver delays only its
        own items, never another customer's callbacks or the row writes."""
        lanes: dict[str, list[OutboxItem]] = {}
        for item in self.claim_due(now=now):
            if item.kind in sinks:
                lanes.setdefault(lane(item), []).append(item)
        if len(lanes) <= 1:
            return sum(self.deliver_lane(sinks, items, delay) for items in lanes.values())
        with ThreadPoolExecutor(max_workers=min(max_lanes, len(lanes)), thread_name_prefix="outbox") as pool:
            return sum(pool.map(lambda items: self.deliver_lane(sinks, items, delay), lanes.values()))

    def deliver_lane(
        self, sinks: Mapping[str, Sink], items: list[OutboxItem], delay: Callable[[int], float]
    ) -> int:
        landed = 0
        for item in items:
            outcome = self._deliver(sinks, item)
            age = time.time() - item.created
            if outcome.ok:
                self.finish(item)
                landed += 1
            elif not outcome.retryable or age > self.max_age_s:
                log.error(
                    "outbox: giving up on %s after %d tries (%s)", item.item_id, item.tries + 1, outcome.error
                )
                self.finish(item)
            else:
                wait = delay(item.tries)
                if outcome.retry_after_s is not None:  # the receiver said when: never sooner, capped
                    wait = max(wait, min(outcome.retry_after_s, self.cap_s))
                log.warning(
                    "outbox: %s not delivered (%s); retry in %.1fs", item.item_id, outcome.error, wait
                )
                self.retry_later(item, wait)
        return landed
