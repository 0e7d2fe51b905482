"""What happens when an attempt ends: retry after a backoff, requeue at the front, or fail for good,
and which budget the ending is counted against. The one place this is decided, for both callers:
the runner (the work-horse ends its own attempt) and daemon/worker/lost.py (the worker parent, or any
worker's registry cleanup, ends an attempt whose horse died or whose worker vanished).

    failure (retryable)  → JOB_MAX_ATTEMPTS   → retry after backoff, at the back; the last one fails
    failure (final)      → no budget           → fail at once
    horse killed         → JOB_MAX_ATTEMPTS   → as a retryable failure (OOM killer, segfault)
    preempted            → JOB_MAX_PREEMPTIONS → requeue at the front; over the cap, too_many_preemptions
    worker lost          → JOB_MAX_PREEMPTIONS → as preempted, code worker_lost (no heartbeat: abandoned)
    canceled             → no budget           → canceled

`decide` is pure. `settle` applies the counting and the ledger's status around it, so the ledger says
`requeued` or `failed` whichever path ended the attempt (they drifted apart when written twice).
A superseded attempt is not an ending here: it leaves without a trace, decided by nobody.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import redis as redis_lib

from ..config import Settings
from ..errors import JobError, WorkerLost

if TYPE_CHECKING:
    from ..adapters.ledger import Ledger, Settlement

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def unexpected_error(exc: Exception) -> JobError:
    """What an exception that is not a JobError means for the job. The machine or a service failing
    under it (a full disk, Redis away longer than the client's retries) is retryable: another attempt,
    here after the work dir is swept or on another instance, can succeed, and a multi-hour job must not
    die for good of it. Anything else is a bug: internal_error, final."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return JobError(f"disk full on this instance: {exc}", code="disk_full", retryable=True)
    if isinstance(exc, redis_lib.ConnectionError | redis_lib.TimeoutError):
        return JobError(f"Redis unavailable: {exc}", code="redis_unavailable", retryable=True)
    return JobError(f"internal error: {type(exc).__name__}: {exc}", code="internal_error")


MAX_RETRY_DELAY_S = 3600
"""The longest backoff between failed attempts: doubling past an hour only delays the verdict."""


class How(enum.Enum):
    """How an attempt ended."""

    RETRYABLE_FAILURE = "retryable failure"
    FINAL_FAILURE = "final failure"
    HORSE_KILLED = "horse killed"
    PREEMPTED = "preempted"
    WORKER_LOST = "worker lost"
    CANCELED = "canceled"


class Budget(enum.Enum):
    """What an ending uses up; the values are the ledger's counters."""

    FAILURES = "failures"
    PREEMPTIONS = "preemptions"


class Action(enum.Enum):
    RETRY = "retry after backoff"
    REQUEUE_FRONT = "requeue at the front"
    FAIL = "fail"
    CANCEL = "cancel"


@dataclass(frozen=True)
class Ending:
    """How an attempt ended, and the error that says so (what the row and the callback report)."""

    how: How
    error: JobError

    @classmethod
    def failed(cls, error: JobError) -> Ending:
        """A handler's error, or the runner's timeout or internal error: final unless retryable."""
        return cls(How.RETRYABLE_FAILURE if error.retryable else How.FINAL_FAILURE, error)

    @classmethod
    def horse_killed(cls, cause: str) -> Ending:
        """The work-horse died under a live worker: most likely the job's own doing (memory)."""
        return cls(How.HORSE_KILLED, WorkerLost(cause))

    @classmethod
    def preempted(cls, cause: str) -> Ending:
        """The worker was stopped (SIGTERM, spot notice, drain): not the job's fault."""
        return cls(How.PREEMPTED, JobError(cause, code="preempted", retryable=True))

    @classmethod
    def worker_lost(cls, cause: str) -> Ending:
        """The worker vanished (spot without notice, SIGKILL): its job was found abandoned."""
        return cls(How.WORKER_LOST, JobError(cause, code="worker_lost", retryable=True))


@dataclass(frozen=True)
class Budgets:
    # JOB_MAX_ATTEMPTS: attempts a job may fail (retryably) before it fails for good.
    max_attempts: int
    # JOB_MAX_PREEMPTIONS: times a job may be stopped with its worker and still be requeued.
    max_preemptions: int
    # JOB_RETRY_BACKOFF_S: the wait before the first retry; it doubles with each failure.
    backoff_s: float

    @classmethod
    def of(cls, settings: Settings) -> Budgets:
        return cls(
            max_attempts=settings.job_max_attempts,
            max_preemptions=settings.job_max_preemptions,
            backoff_s=settings.job_retry_backoff_s,
        )


@dataclass(frozen=True)
class Decision:
    action: Action
    # "requeued", "failed" or "canceled": the ledger's status, the row's and the callback's `job.<status>`.
    status: str
    # What the row and the callback report.
    error: JobError
    # The budget this ending used, and how much of it is spent now (this ending included).
    charged: Budget | None = None
    spent: int = 0
    # Seconds before the retry (RETRY only).
    delay_s: int = 0
    # False when the attempt had been settled already (its horse ended it, then died): this is that
    # first decision again, and nothing was counted twice.
    first: bool = True

    @property
    def at_front(self) -> bool:
        return self.action is Action.REQUEUE_FRONT

    @property
    def discards_checkpoints(self) -> bool:
        """Whether the job's checkpoints go with this ending. A job canceled, or failed with nothing a
        retry could fix (a refused input), leaves none behind. One that ran out of a budget (a
        retryable failure, preemptions) keeps them: a retry by hand (`rq requeue`) resumes where it
        stopped, and the bucket's lifecycle rule expires them otherwise."""
        return self.action is Action.CANCEL or (self.action is Action.FAIL and self.charged is None)


def retry_delay(backoff_s: float, failures: int) -> int:
    """Backoff after the n-th failure: JOB_RETRY_BACKOFF_S, doubling, capped at an hour."""
    return int(min(MAX_RETRY_DELAY_S, backoff_s * 2 ** max(0, failures - 1)))


def charged(how: How) -> Budget | None:
    """The budget an ending counts against (None: it is decided without one)."""
    if how in (How.RETRYABLE_FAILURE, How.HORSE_KILLED):
        return Budget.FAILURES
    if how in (How.PREEMPTED, How.WORKER_LOST):
        return Budget.PREEMPTIONS
    return None


def decide(ending: Ending, *, failures: int, preemptions: int, budgets: Budgets) -> Decision:
    """The decision for `ending`, given the failures and preemptions so far (this ending counted)."""
    error = ending.error
    budget = charged(ending.how)
    if ending.how is How.CANCELED:
        return Decision(Action.CANCEL, "canceled", error)
    if budget is Budget.FAILURES:
        if failures < budgets.max_attempts:
            delay = retry_delay(budgets.backoff_s, failures)
            return Decision(Action.RETRY, "requeued", error, budget, failures, delay)
        return Decision(Action.FAIL, "failed", error, budget, failures)
    if budget is Budget.PREEMPTIONS:
        cap = budgets.max_preemptions
        if preemptions > cap:
            too_many = JobError(
                f"{error.message}; preempted {preemptions} times (JOB_MAX_PREEMPTIONS={cap})",
                code="too_many_preemptions",
            )
            return Decision(Action.FAIL, "failed", too_many, budget, preemptions)
        requeued = JobError(f"{error.message}; the job was requeued", code=error.code, retryable=True)
        return Decision(Action.REQUEUE_FRONT, "requeued", requeued, budget, preemptions)
    return Decision(Action.FAIL, "failed", error)


def settle(ledger: Ledger, job_id: str, attempt: int, ending: Ending, budgets: Budgets) -> Decision:
    """Count `ending` against its budget in the ledger, decide, and set the ledger's status to the
    decision's: the one place both the runner and lost.py apply it. Once per attempt: an attempt
    settled before (its work-horse decided, then was killed before rq acted on it) is not counted
    again, and gets its first decision back (`first=False`)."""
    budget = charged(ending.how)
    settled = ledger.settle(job_id, attempt, budget.value if budget else None)
    if not settled.first and settled.decision:
        return _recorded(settled.decision, ending, settled)
    decision = decide(ending, failures=settled.failures, preemptions=settled.preemptions, budgets=budgets)
    ledger.record_decision(job_id, attempt, decision.status, f"{decision.action.name}:{decision.delay_s}")
    return decision if settled.first else replace(decision, first=False)


def _recorded(text: str, ending: Ending, settled: Settlement) -> Decision:
    name, _, delay = text.partition(":")
    action = Action[name]
    status = {Action.FAIL: "failed", Action.CANCEL: "canceled"}.get(action, "requeued")
    spent = settled.preemptions if action is Action.REQUEUE_FRONT else settled.failures
    return Decision(action, status, ending.error, charged(ending.how), spent, int(delay or 0), first=False)
