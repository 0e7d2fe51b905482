"""The daemon's error hierarchy.

Every failure a job can meet is a `JobError` with a stable machine-readable `code` (what the web app
switches on), a human `message` (what the customer or operator reads) and `retryable` (whether another
attempt could succeed). Tool failures are mapped to these at the edge where they happen.

Interruptions (cancel, preemption) are `BaseException`s, like rq's own shutdown exceptions, so that an
`except Exception` in handler code can never swallow them.
"""

from __future__ import annotations


class DaemonError(Exception):
    """Root of everything the daemon raises on purpose."""


class ConfigError(DaemonError):
    """A setting is missing or malformed; start-up stops with this message."""


class JobError(DaemonError):
    """A job failed. `code` is stable and machine-readable; `message` is for humans."""

    code: str = "job_failed"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class SpecError(JobError):
    """The job spec is malformed: never retried, the same spec would fail the same way."""

    code = "invalid_spec"


class InputError(JobError):
    """The job's inputs (URLs, files) are unusable: bad content, refused address, too large."""

    code = "invalid_input"


class DownloadError(JobError):
    """An input could not be fetched for a reason that may pass (timeout, 5xx, connection reset)."""

    code = "download_failed"
    retryable = True


class StorageError(JobError):
    """Writing outputs failed; a later attempt may succeed."""

    code = "storage_failed"
    retryable = True


class WorkerLost(JobError):  # noqa: N818 - reads as what happened
    """The process running the job died (OOM kill, segfault, lost instance)."""

    code = "worker_lost"
    retryable = True


class JobInterrupted(BaseException):  # noqa: N818 - named after what happened, like rq's StopRequested
    """The job was asked to stop before finishing. Not an `Exception` on purpose."""

    reason = "interrupted"


class JobCanceled(JobInterrupted):
    """Someone ran `python -m daemon cancel JOB_ID`."""

    reason = "canceled"


class JobPreempted(JobInterrupted):
    """The daemon is stopping (SIGTERM, spot notice): the job goes back to the queue."""

    reason = "preempted"


class AttemptSuperseded(JobInterrupted):
    """A newer attempt of the job exists (this instance was presumed dead and came back): this attempt
    must stop without writing rows, outputs, checkpoints or callbacks."""

    reason = "superseded by a newer attempt"
