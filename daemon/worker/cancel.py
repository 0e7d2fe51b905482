"""Canceling a job: `python -m daemon cancel JOB_ID`.

A queued job is taken off its queue and reported canceled at once. A running job is asked to stop:
the flag in Redis is seen by the job's cancel watcher within a second, the job ends its attempt as
canceled and reports it itself. If it has not stopped after `wait_s` (stuck in native code), the worker
running it is told to kill it (rq's stop-job command) and the cancel is reported from here.
"""

from __future__ import annotations

import logging
import time

from rq.command import send_stop_job_command
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from ..adapters.runtime import Runtime
from ..attempt.report import CANCELED, Identity, base_row, error_fields, notify_ended, write_row
from ..errors import JobError
from ..handlers.registry import parse_job

log = logging.getLogger(__name__)


def cancel_job(runtime: Runtime, job_id: str, *, wait_s: float) -> str:
    """Returns what happened: "canceled", "killed", "already-ended" or "unknown"."""
    runtime.ledger.request_cancel(job_id, at=time.time())
    rq_id = runtime.ledger.get(job_id).rq_id or job_id
    try:
        job = Job.fetch(rq_id, connection=runtime.redis, serializer=JSONSerializer)
    except Exception:
        log.warning("no rq job %s; the flag stays, so the job is canceled if it ever starts", job_id)
        return "unknown"
    status = job.get_status()
    if status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
        job.cancel()
        _report_canceled(runtime, job)
        return "canceled"
    if status != JobStatus.STARTED:
        return "already-ended"
    if _wait_for_status(runtime, job_id, "canceled", wait_s):
        return "canceled"
    log.warning("job %s did not stop within %.0fs; killing its work-horse", job_id, wait_s)
    send_stop_job_command(runtime.redis, rq_id)
    _report_canceled(runtime, job)
    return "killed"


def _wait_for_status(runtime: Runtime, job_id: str, status: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if runtime.ledger.get(job_id).status == status:
            return True
        time.sleep(0.2)
    return False


def _report_canceled(runtime: Runtime, job: Job) -> None:
    spec = parse_job(job.args[0])
    identity = Identity.of(spec)
    attempt = runtime.ledger.get(spec.job_id).attempt
    runtime.ledger.set_status(spec.job_id, "canceled")
    write_row(
        runtime,
        {
            **base_row(identity, attempt, runtime.settings.worker_name),
            "status": "canceled",
            **error_fields(CANCELED),
        },
    )
    notify_ended(runtime, identity, attempt, "canceled", error=CANCELED)
    _discard_checkpoints(runtime, spec.job_id, attempt)


def _discard_checkpoints(runtime: Runtime, job_id: str, attempt: int) -> None:
    """A queued job may be a preempted one waiting to resume: canceled, its checkpoints serve nobody."""
    try:
        runtime.checkpoints(job_id, attempt).delete_all()
    except JobError as exc:  # they expire by the bucket's lifecycle rule anyway
        log.warning("checkpoints of the canceled job %s not deleted: %s", job_id, exc)
