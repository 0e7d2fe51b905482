"""When an attempt ends without the work-horse saying how: it was killed, it crashed, or its worker
vanished and rq's registry cleanup found the job abandoned.

The worker parent (or whichever worker ran the cleanup) decides here, with the same policy the runner
uses: preemption (the worker was stopped, or vanished with its instance: abandoned) → requeue at the
front, counted against JOB_MAX_PREEMPTIONS only; a work-horse killed under a live worker (the OOM
killer, a segfault) → counted as a failure, retried with backoff while attempts remain, else failed.
The row and the callback say which. The decision is
applied through rq's own retry fields on the job object rq is about to finalize.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from rq.job import Job

from ..adapters.runtime import Runtime
from ..attempt.report import Identity, base_row, error_fields, notify_ended, preemption, write_row
from ..attempt.runner import retry_delay
from ..errors import JobError, WorkerLost
from ..handlers import parse_job
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


def after_lost_attempt(
    runtime: Runtime, job: Job, *, cause: str, preempted: bool, code: str = "preempted"
) -> str:
    """Report the lost attempt and set rq's retry fields on `job`; returns the decision taken."""
    try:
        spec = parse_job(job.args[0])
    except Exception as exc:  # a job we never could have run: nothing to report to
        log.error("lost job %s has no valid spec (%s); leaving it failed", job.id, exc)
        job.retries_left = None
        return "failed"
    identity = Identity.of(spec)
    entry = runtime.ledger.get(spec.job_id)
    with log_context(job=spec.job_id, attempt=entry.attempt):
        row = base_row(identity, entry.attempt, runtime.settings.worker_name)
        if preempted and runtime.ledger.record_preemption(spec.job_id) > runtime.settings.job_max_preemptions:
            error = WorkerLost(f"{cause}, and JOB_MAX_PREEMPTIONS reached", code="too_many_preemptions")
            return _fail(runtime, job, identity, row, entry.attempt, error)
        if preempted:
            log.warning("attempt stopped with the worker (%s); requeued at the front", cause)
            _set_rq_retry(job, delay=0, at_front=True)
            stopped = preemption(cause, code)
            write_row(runtime, {**row, "status": "requeued", **error_fields(stopped)})
            notify_ended(runtime, identity, entry.attempt, "requeued", error=stopped)
            return "requeued"
        error = WorkerLost(cause)
        failures = runtime.ledger.record_failure(spec.job_id)
        if failures < runtime.settings.job_max_attempts:
            delay = retry_delay(runtime.settings, failures)
            log.error("attempt lost (%s); retry %d in %ds", cause, failures, delay)
            _set_rq_retry(job, delay=delay, at_front=False)
            write_row(runtime, {**row, "status": "requeued", **error_fields(error)})
            notify_ended(runtime, identity, entry.attempt, "requeued", error=error)
            return "requeued"
        log.error("attempt lost (%s); no attempts left", cause)
        return _fail(runtime, job, identity, row, entry.attempt, error)


def _fail(
    runtime: Runtime, job: Job, identity: Identity, row: dict[str, Any], attempt: int, error: JobError
) -> str:
    log.error("job failed: %s", error)
    job.retries_left = None
    runtime.ledger.set_status(identity.job_id, "failed")
    write_row(runtime, {**row, "status": "failed", **error_fields(error)})
    notify_ended(runtime, identity, attempt, "failed", error=error)
    try:
        runtime.checkpoints(identity.job_id, attempt).delete_all()
    except JobError as exc:
        log.warning("checkpoints of the failed job not deleted: %s", exc)
    return "failed"


def _set_rq_retry(job: Job, *, delay: int, at_front: bool) -> None:
    # rq retries a failed job when retries_left > 0, after retry_intervals; one retry is all we grant
    # per decision, the ledger counts the rest.
    job.retries_left = 1
    job.retry_intervals = [delay] if delay else None
    job.enqueue_at_front_on_retry = at_front
