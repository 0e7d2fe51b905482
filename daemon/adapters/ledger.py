"""The daemon's own per-job state in Redis, beside rq's: attempts, failures, cancel requests.

rq knows executions of an rq job; the customer's job (one `job_id`) may run several times: after a
crash, a lost instance, a spot notice. The ledger counts those attempts with INCR, so attempt numbers
are unique and increasing across instances, which makes them usable as fencing tokens for progress rows
and callbacks. Preemptions are attempts but not failures: only failures use up JOB_MAX_ATTEMPTS.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from ..errors import AttemptSuperseded, SpecError

KEY_PREFIX = "daemon:job:"
"""Hash per job id: attempt, failures, preemptions, rq_id, status, worker, and the claim on the id: its
owner (set by the producers' enqueue script, `daemon/worker/enqueue.lua`) and spec digest."""

CANCEL_PREFIX = "daemon:cancel:"
"""Unix time of the last cancel request for the job id."""

STATE_TTL_S = 30 * 24 * 3600
"""How long the ledger remembers a job after its last change (re-runs of old ids continue counting)."""


class JobIdInUse(SpecError):  # noqa: N818 - a refusal, named for what it says
    """A spec names a job id that another owner or another spec holds: refused, nothing touched."""


_BEGIN_ATTEMPT = """
-- KEYS[1] the job's hash; ARGV: check ('1'/'0'), owner, spec digest, rq id, worker, ttl
if ARGV[1] == '1' then
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner and owner ~= ARGV[2] then return {0, 'owner'} end
  local spec = redis.call('HGET', KEYS[1], 'spec')
  if spec and spec ~= ARGV[3] then return {0, 'spec'} end
  redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'spec', ARGV[3])
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'rq_id', ARGV[4], 'status', 'running', 'worker', ARGV[5])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
return {attempt, ''}
"""

_SETTLE = """
-- KEYS[1] the job's hash; ARGV: attempt, the counter to bump ('' for none), ttl
if redis.call('HGET', KEYS[1], 'settled') == ARGV[1] then
  local seen = redis.call('HMGET', KEYS[1], 'failures', 'preemptions', 'decision')
  return {0, seen[1] or '0', seen[2] or '0', seen[3] or ''}
end
if ARGV[2] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[2], 1) end
redis.call('HSET', KEYS[1], 'settled', ARGV[1])
redis.call('HDEL', KEYS[1], 'decision')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
local now = redis.call('HMGET', KEYS[1], 'failures', 'preemptions')
return {1, now[1] or '0', now[2] or '0', ''}
"""

_RECORD_DECISION = """
if redis.call('HGET', KEYS[1], 'settled') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'decision', ARGV[3])
return 1
"""

_CLAIM_COMPLETION = """
local current = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if current ~= tonumber(ARGV[1]) or redis.call('HGET', KEYS[1], 'status') == 'completed' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'completed', 'completed_attempt', ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Settlement:
    """An attempt's ending as counted: `first` is False when this attempt was settled before (its
    work-horse ended it, then died): nothing was counted again, and `decision` is what was decided."""

    first: bool
    failures: int
    preemptions: int
    decision: str | None


@dataclass(frozen=True)
class LedgerEntry:
    attempt: int
    failures: int
    preemptions: int
    rq_id: str | None
    status: str | None
    worker: str | None
    # Whom the id belongs to ('' for a job without owner); None while nobody claimed it.
    owner: str | None = None


class Ledger:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def _key(self, job_id: str) -> str:
        return KEY_PREFIX + job_id

    def begin_attempt(
        self, job_id: str, *, rq_id: str, worker: str, owner: str | None = None, spec: str | None = None
    ) -> int:
        """Count a new attempt and return its number (1, 2, …). With `owner` ('' for none) and `spec`
        (its `spec_digest`), the id is claimed for them atomically: an id already claimed by another
        owner or another spec raises JobIdInUse and nothing is changed."""
        claim = ("1", owner or "", spec or "") if spec is not None else ("0", "", "")
        result = self.redis.eval(_BEGIN_ATTEMPT, 1, self._key(job_id), *claim, rq_id, worker, STATE_TTL_S)
        attempt, clash = int(result[0]), result[1].decode() if isinstance(result[1], bytes) else result[1]
        if clash:
            raise JobIdInUse(
                f"job_id {job_id} belongs to another {clash}: a new job needs a new id", code="job_id_in_use"
            )
        return attempt

    def settle(self, job_id: str, attempt: int, counter: str | None) -> Settlement:
        """Count attempt `attempt`'s ending against `counter` ("failures", "preemptions", or None),
        once: a second settlement of the same attempt counts nothing and returns the first's decision."""
        raw = self.redis.eval(_SETTLE, 1, self._key(job_id), attempt, counter or "", STATE_TTL_S)
        text = [part.decode() if isinstance(part, bytes) else part for part in raw[1:]]
        return Settlement(bool(int(raw[0])), int(text[0]), int(text[1]), text[2] or None)

    def record_decision(self, job_id: str, attempt: int, status: str, decision: str) -> None:
        """The ledger's status and the settled attempt's decision (for a second settlement to reuse)."""
        self.redis.eval(_RECORD_DECISION, 1, self._key(job_id), attempt, status, decision)

    def record_preemption(self, job_id: str) -> int:
        """Count a preemption; returns the number so far (capped by JOB_MAX_PREEMPTIONS, not by
        the failure budget)."""
        key = self._key(job_id)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, "preemptions", 1)
            pipe.expire(key, STATE_TTL_S)
            return int(pipe.execute()[0])

    def is_current(self, job_id: str, attempt: int) -> bool:
        """Whether `attempt` is still the job's newest attempt and the job is not completed."""
        current, status = self.redis.hmget(self._key(job_id), ["attempt", "status"])
        return int(current or 0) == attempt and status != b"completed"

    def check_current(self, job_id: str, attempt: int) -> None:
        """The fence before any write that a newer attempt could own: raise AttemptSuperseded if
        this attempt is stale."""
        if not self.is_current(job_id, attempt):
            raise AttemptSuperseded(f"attempt {attempt} of {job_id} is no longer current")

    def claim_completion(self, job_id: str, attempt: int) -> bool:
        """Atomically mark the job completed by `attempt` if it is the current attempt and nobody
        completed it yet. Only the attempt that gets True reports completion."""
        return bool(self.redis.eval(_CLAIM_COMPLETION, 1, self._key(job_id), attempt))

    def set_stop_reason(self, job_id: str, reason: str) -> None:
        """Why the worker is preempting the job (a spot notice, SIGTERM): the job's row will say it."""
        self.redis.hset(self._key(job_id), "stop_reason", reason)

    def pop_stop_reason(self, job_id: str) -> str | None:
        with self.redis.pipeline() as pipe:
            pipe.hget(self._key(job_id), "stop_reason")
            pipe.hdel(self._key(job_id), "stop_reason")
            raw = pipe.execute()[0]
        return raw.decode() if raw else None

    def set_status(self, job_id: str, status: str) -> None:
        self.redis.hset(self._key(job_id), "status", status)

    def get(self, job_id: str) -> LedgerEntry:
        stored: dict[bytes, bytes] = self.redis.hgetall(self._key(job_id))  # type: ignore[assignment]
        raw = {k.decode(): v.decode() for k, v in stored.items()}
        return LedgerEntry(
            attempt=int(raw.get("attempt", 0)),
            failures=int(raw.get("failures", 0)),
            preemptions=int(raw.get("preemptions", 0)),
            rq_id=raw.get("rq_id"),
            status=raw.get("status"),
            worker=raw.get("worker"),
            owner=raw.get("owner"),
        )

    def request_cancel(self, job_id: str, at: float) -> None:
        self.redis.set(CANCEL_PREFIX + job_id, repr(at), ex=STATE_TTL_S)

    def cancel_requested(self, job_id: str, *, since: float) -> bool:
        """True if a cancel was asked at or after `since` (the rq job's creation), so a job id that
        is enqueued again after a cancel runs normally."""
        raw = self.redis.get(CANCEL_PREFIX + job_id)
        return raw is not None and float(raw) >= since

    def clear_cancel(self, job_id: str) -> None:
        self.redis.delete(CANCEL_PREFIX + job_id)
