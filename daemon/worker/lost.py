"""When an attempt ends without the work-horse saying how: it was killed, it crashed, or its worker
vanished and rq's registry cleanup found the job abandoned.

The worker parent (or whichever worker ran the cleanup) reports it here, as daemon/attempt/policy.py
decides for every ending: preemption (the worker was stopped, or vanished with its instance: abandoned)
→ requeue at the front, counted against JOB_MAX_PREEMPTIONS only; a work-horse killed under a live
worker (the OOM killer, a segfault) → counted as a failure, retried with backoff while attempts remain,
else failed. The ledger, the row and the callback say which. The decision is applied through rq's own
retry fields on the job object rq is about to finalize.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from rq.job import Job, JobStatus

from ..adapters.runtime import Runtime
from ..attempt.policy import Action, Budgets, Decision, Ending, settle
from ..attempt.report import Identity, base_row, error_fields, notify_ended, write_row
from ..errors import JobError
from ..handlers.registry import parse_job
from ..logs import log_context

log = logging.getLogger(__name__)


def describe_exit(ret_val: int | None) -> str:
    if ret_val is not None and os.WIFSIGNALED(ret_val):
        sig = os.WTERMSIG(ret_val)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = " (likely the out-of-memory killer)" if sig == signal.SIGKILL else ""
        return f"work-horse killed by {name}{hint}"
    if ret_val is not None and os.WIFEXITED(ret_val):
        return f"work-horse exited with status {os.WEXITSTATUS(ret_val)} without finishing the job"
    return "work-horse ended without finishing the job"


@dataclass(frozen=True)
class LostOutcome:
    """What became of a lost attempt: the ledger's status, and whether rq already holds the outcome
    (the horse ended the attempt itself, and rq requeued or failed it, before the horse died): then
    rq's own failure handling must not run on top of it (a second requeue, or a queued job marked
    failed)."""

    status: str
    ended_by_horse: bool = False


def after_lost_attempt(runtime: Runtime, job: Job, ending: Ending) -> LostOutcome:
    """Report the lost attempt and set rq's retry fields on `job`."""
    try:
        spec = parse_job(job.args[0])
    except Exception as exc:  # a job we never could have run: nothing to report to
        log.error("lost job %s has no valid spec (%s); leaving it failed", job.id, exc)
        job.retries_left = None
        return LostOutcome("failed")
    identity = Identity.of(spec)
    attempt = runtime.ledger.get(spec.job_id).attempt
    with log_context(job=spec.job_id, attempt=attempt):
        decision = settle(runtime.ledger, spec.job_id, attempt, ending, Budgets.of(runtime.settings))
        if not decision.first and job.get_status() != JobStatus.STARTED:
            log.warning(
                "attempt already ended by its work-horse (%s), then %s", decision.status, ending.error
            )
            return LostOutcome(decision.status, ended_by_horse=True)
        row = {**base_row(identity, attempt, runtime.settings.worker_name), "status": decision.status}
        failed = decision.action is Action.FAIL
        if failed:
            log.error("attempt lost (%s); job failed: %s", ending.error.message, decision.error)
            job.retries_left = None
        else:
            _log_requeue(ending, decision)
            _set_rq_retry(job, delay=decision.delay_s, at_front=decision.at_front)
        write_row(runtime, {**row, **error_fields(decision.error)})
        notify_ended(runtime, identity, attempt, decision.status, error=decision.error)
        if failed and decision.discards_checkpoints:
            _discard_checkpoints(runtime, identity.job_id, attempt)
        return LostOutcome(decision.status)


def _log_requeue(ending: Ending, decision: Decision) -> None:
    cause = ending.error.message
    if decision.at_front:
        log.warning("attempt stopped with the worker (%s); requeued at the front", cause)
    else:
        log.error("attempt lost (%s); retry %d in %ds", cause, decision.spent, decision.delay_s)


def _discard_checkpoints(runtime: Runtime, job_id: str, attempt: int) -> None:
    try:
        runtime.checkpoints(job_id, attempt).delete_all()
    except JobError as exc:  # they expire by the bucket's lifecycle rule anyway
        log.warning("checkpoints of the failed job not deleted: %s", exc)


def _set_rq_retry(job: Job, *, delay: int, at_front: bool) -> None:
    # rq retries a failed job when retries_left > 0, after retry_intervals; one retry is all we grant
    # per decision, the ledger counts the rest.
    job.retries_left = 1
    job.retry_intervals = [delay] if delay else None
    job.enqueue_at_front_on_retry = at_front
