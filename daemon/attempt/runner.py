"""One attempt of one job, inside the work-horse: the job's life, readable by its method names.

    prepare → (canceled already?) → announce start → perform the handler's stages →
    handle success | handle failure (retry or fail) | handle interrupt (cancel or preempt)

How a failure or a preemption ends (retry, requeue at the front, fail; which budget) is decided by
daemon/attempt/policy.py, the same policy daemon/worker/lost.py applies when the horse dies.

Delivery is at-least-once: an attempt may be cut anywhere (SIGKILL, lost instance) and run again, so
every stage must be idempotent and outputs are written under deterministic keys.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from rq.job import Job, Retry
from rq.timeouts import JobTimeoutException

from ..adapters.checkpoints import Checkpoints
from ..adapters.ledger import JobIdInUse
from ..adapters.runtime import Runtime
from ..adapters.storage import StoredObject
from ..errors import AttemptSuperseded, JobCanceled, JobError, JobInterrupted, JobPreempted, SpecError
from ..handlers.registry import parse_job, registry
from ..logs import bind_context
from ..spec.model import JobSpec
from ..spec.tenancy import Roots, confine, owner_of, spec_digest
from ..telemetry import metrics
from .context import JobContext, attempt_reporter
from .interrupts import CancelWatcher, Interrupts
from .policy import Action, Budgets, Ending, How, settle, unexpected_error
from .progress import ProgressReporter
from .report import CANCELED, Identity, base_row, error_fields, notify, notify_ended, outputs_data, write_row
from .workdirs import claimed

log = logging.getLogger(__name__)


class JobFailed(Exception):  # noqa: N818 - what rq records as the failure of the rq job
    """Raised to rq after the failure was reported to the row and the callback."""


class JobRunner:
    def __init__(self, runtime: Runtime, rq_job: Job) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.rq_job = rq_job
        self.budgets = Budgets.of(self.settings)
        self.interrupts = Interrupts()
        # When the attempt began (monotonic), for its duration in /metrics; None until then.
        self.started: float | None = None
        # Where this attempt's checkpoints go; None until it begins work (nothing to clean up before).
        self.checkpoints: Checkpoints | None = None

    # -- the life of an attempt ------------------------------------------------------------------

    def run(self, raw: Any) -> Any:
        spec = self.prepare(raw)
        identity = Identity.of(spec)
        attempt = self.begin(spec)
        metrics.job_started(spec.kind)
        self.started = time.monotonic()
        bind_context(job=spec.job_id, attempt=attempt)
        reporter = attempt_reporter(
            self.runtime.rows, identity, attempt, self.settings, outbox=self.runtime.outbox
        )
        if self._cancel_requested(spec.job_id):
            return self.handle_cancel(identity, attempt, reporter)
        reporter.update(started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        reporter.start()
        log.info("attempt started: kind=%s inputs=%d", spec.kind, len(spec.inputs))
        notify(self.runtime, identity, attempt, "job.started", 0, {"status": "running"})
        self.interrupts.install()
        watcher = CancelWatcher(lambda: self._cancel_requested(spec.job_id)).start()
        workdir = self.settings.work_dir / spec.job_id / f"attempt-{attempt}"
        self.checkpoints = checkpoints = self.runtime.checkpoints(spec.job_id, attempt)
        try:
            try:
                with claimed(workdir):
                    done = self.perform(spec, attempt, workdir, reporter, identity, checkpoints)
            finally:
                watcher.stop()
            return self.handle_success(identity, attempt, reporter, done.outputs, done.result)
        except AttemptSuperseded:
            return self.handle_superseded(identity, attempt, reporter)
        except JobInterrupted as interrupt:
            return self.handle_interrupt(identity, attempt, reporter, interrupt)
        except JobTimeoutException:
            timeout = JobError(f"attempt exceeded the {spec.kind} time limit", code="job_timeout")
            return self.handle_failure(identity, attempt, reporter, timeout)
        except Exception as exc:
            if (wrapped := self.interrupts.behind(exc)) is not None:
                log.warning("%s, surfacing as %s: %s", wrapped.reason, type(exc).__name__, exc)
                return self.handle_interrupt(identity, attempt, reporter, wrapped)
            if isinstance(exc, JobError):
                return self.handle_failure(identity, attempt, reporter, exc)
            log.exception("unexpected error")
            return self.handle_failure(identity, attempt, reporter, unexpected_error(exc))

    def prepare(self, raw: Any) -> JobSpec[Any]:
        """Validate the spec before any work; a bad one is reported where the client will see it."""
        identity = None
        try:
            spec = parse_job(raw)
            identity = Identity.of(spec)
            confine(spec, Roots.of(self.settings))
            if spec.callback_url and not self.settings.callback_secret:
                raise SpecError(
                    "callback_url given but this daemon has no CALLBACK_SECRET to sign callbacks",
                    code="callbacks_not_configured",
                )
            return spec
        except SpecError as error:
            log.error("spec refused: %s", error)
            identity = identity or Identity.salvage(raw)
            if identity is not None:
                bind_context(job=identity.job_id)
                self.report_refused(identity, error)
            self._no_rq_retry()
            raise JobFailed(str(error)) from None

    def report_refused(self, identity: Identity, error: SpecError) -> None:
        """A refused spec never touches the ledger, rows or storage of a job that is not its own: an id
        that ran belongs to that job, one claimed by another owner to that owner. Only an id that never
        ran and is this owner's (or nobody's) gets the failure on its row and callback, as attempt 0,
        below any real attempt, so the row's fencing drops it wherever a real attempt wrote."""
        entry = self.runtime.ledger.get(identity.job_id)
        if entry.attempt or entry.owner not in (None, identity.owner_id or ""):
            log.error("refusal not reported to the row or callback: %s is another job's", identity.job_id)
            return
        self.report_failed(identity, 0, error, reporter=None)

    def begin(self, spec: JobSpec[Any]) -> int:
        """Claim the job id for this owner and spec and count the attempt, atomically; an id held by
        another owner or spec is refused (JobFailed) with nothing written anywhere."""
        try:
            return self.runtime.ledger.begin_attempt(
                spec.job_id,
                rq_id=self.rq_job.id,
                worker=self.settings.worker_name,
                owner=owner_of(spec) or "",
                spec=spec_digest(spec),
            )
        except JobIdInUse as refused:
            log.error("spec refused: %s", refused)
            self._no_rq_retry()
            raise JobFailed(str(refused)) from None

    def perform(
        self,
        spec: JobSpec[Any],
        attempt: int,
        workdir: Path,
        reporter: ProgressReporter,
        identity: Identity,
        checkpoints: Checkpoints,
    ) -> JobContext:
        handler = registry()[spec.kind]
        workdir.mkdir(parents=True, exist_ok=True)

        def milestone(percent: int) -> None:
            try:
                current = self.runtime.ledger.is_current(spec.job_id, attempt)
            except RedisError as exc:  # a progress callback is not worth failing the job for
                log.warning("attempt not checked before a progress callback: %s", exc)
                current = True
            if not current:
                raise AttemptSuperseded(f"attempt {attempt} of {spec.job_id} is no longer current")
            notify(
                self.runtime,
                identity,
                attempt,
                "job.progress",
                percent,
                {"status": "running", "progress": percent, "stage": reporter.state.get("stage")},
            )

        ctx = JobContext.for_attempt(
            self.runtime,
            handler,
            spec,
            attempt,
            workdir=workdir,
            reporter=reporter,
            store=self.runtime.output_store(spec.output),
            interrupts=self.interrupts,
            on_milestone=milestone,
            checkpoints=checkpoints,
            fence=lambda: self.runtime.ledger.check_current(spec.job_id, attempt),
        )
        handler.run(ctx)
        return ctx

    # -- endings ---------------------------------------------------------------------------------

    def handle_success(
        self,
        identity: Identity,
        attempt: int,
        reporter: ProgressReporter,
        outputs: dict[str, StoredObject],
        result: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self.interrupts.shielded():
            if not self.runtime.ledger.claim_completion(identity.job_id, attempt):
                return self.handle_superseded(identity, attempt, reporter)
            self._count(identity, "completed")
            data = outputs_data(outputs)
            reporter.close(
                status="completed",
                stage="done",
                progress=100,
                outputs=data,
                result=result,
                error_code=None,
                error_message=None,
            )
            notify_ended(self.runtime, identity, attempt, "completed", outputs=data, result=result)
            log.info("attempt completed: %d output(s)", len(data))
            self._discard_checkpoints()
            ended = {"status": "completed", "job_id": identity.job_id, "attempt": attempt, "outputs": data}
            return {**ended, "result": result} if result is not None else ended

    def handle_failure(
        self, identity: Identity, attempt: int, reporter: ProgressReporter, error: JobError
    ) -> Retry:
        with self.interrupts.shielded():
            return self.conclude(identity, attempt, reporter, Ending.failed(error))

    def handle_interrupt(
        self, identity: Identity, attempt: int, reporter: ProgressReporter, interrupt: JobInterrupted
    ) -> Any:
        if isinstance(interrupt, JobCanceled) or self.interrupts.requested is JobCanceled:
            return self.handle_cancel(identity, attempt, reporter)
        assert isinstance(interrupt, JobPreempted)
        with self.interrupts.shielded():
            cause = self.runtime.ledger.pop_stop_reason(identity.job_id) or "the worker stopped"
            return self.conclude(identity, attempt, reporter, Ending.preempted(cause))

    def conclude(self, identity: Identity, attempt: int, reporter: ProgressReporter, ending: Ending) -> Retry:
        """End the attempt as the policy decides: requeued (rq retries it) or failed (JobFailed)."""
        decision = settle(self.runtime.ledger, identity.job_id, attempt, ending, self.budgets)
        if decision.action is Action.FAIL:
            self.report_failed(
                identity, attempt, decision.error, reporter=reporter, discard=decision.discards_checkpoints
            )
            self._no_rq_retry()
            raise JobFailed(str(decision.error))
        if decision.at_front:
            log.warning("attempt preempted (%d so far); requeued at the front of its queue", decision.spent)
        else:
            log.warning(
                "attempt failed (%s); retry %d of %d in %ds",
                decision.error,
                decision.spent,
                self.budgets.max_attempts - 1,
                decision.delay_s,
            )
        reporter.close(status=decision.status, **error_fields(decision.error))
        notify_ended(self.runtime, identity, attempt, decision.status, error=decision.error)
        self._count(identity, decision.status)
        return self._retry(delay=decision.delay_s, at_front=decision.at_front)

    def handle_cancel(self, identity: Identity, attempt: int, reporter: ProgressReporter) -> dict[str, Any]:
        with self.interrupts.shielded():
            decision = settle(
                self.runtime.ledger, identity.job_id, attempt, Ending(How.CANCELED, CANCELED), self.budgets
            )
            reporter.close(status=decision.status, **error_fields(decision.error))
            notify_ended(self.runtime, identity, attempt, decision.status, error=decision.error)
            log.warning("attempt canceled")
            self._count(identity, "canceled")
            self._discard_checkpoints()
            return {"status": "canceled", "job_id": identity.job_id, "attempt": attempt}

    def handle_superseded(
        self, identity: Identity, attempt: int, reporter: ProgressReporter
    ) -> dict[str, Any]:
        """A newer attempt owns the job (this one was presumed dead): leave without a trace. The row
        is not touched (the trigger would drop it anyway), no callback, no retry, no cleanup."""
        reporter.discard()
        log.warning("attempt %d superseded by a newer attempt; stopping without writing", attempt)
        self._count(identity, "superseded")
        return {"status": "superseded", "job_id": identity.job_id, "attempt": attempt}

    def _discard_checkpoints(self) -> None:
        if self.checkpoints is None:
            return
        try:
            self.checkpoints.delete_all()
        except JobError as exc:  # they expire by the bucket's lifecycle rule anyway
            log.warning("checkpoints of the ended job not deleted: %s", exc)

    def report_failed(
        self,
        identity: Identity,
        attempt: int,
        error: JobError,
        *,
        reporter: ProgressReporter | None,
        discard: bool = True,
    ) -> None:
        """The row, the callback and /metrics of a failure the policy decided (it set the ledger);
        `discard`: the checkpoints go too (the policy's `discards_checkpoints`)."""
        log.error("job failed: %s", error)
        fields = {"status": "failed", **error_fields(error)}
        if reporter is not None:
            reporter.close(**fields)
        else:
            write_row(self.runtime, {**base_row(identity, attempt, self.settings.worker_name), **fields})
        notify_ended(self.runtime, identity, attempt, "failed", error=error)
        self._count(identity, "failed")
        if discard:
            self._discard_checkpoints()
        elif self.checkpoints is not None:
            log.info("checkpoints kept: a retry by hand resumes from them")

    def _count(self, identity: Identity, outcome: str) -> None:
        """The attempt's end in /metrics (a no-op unless the worker set metrics up)."""
        elapsed = None if self.started is None else time.monotonic() - self.started
        metrics.job_ended(identity.kind, outcome, elapsed)

    # -- rq plumbing -----------------------------------------------------------------------------

    def _cancel_requested(self, job_id: str) -> bool:
        created = self.rq_job.created_at.timestamp() if self.rq_job.created_at else 0.0
        return self.runtime.ledger.cancel_requested(job_id, since=created)

    def _retry(self, *, delay: int, at_front: bool) -> Retry:
        # Our ledger decides whether to retry; rq's Retry is only the mechanism, so its max is always
        # one more than the retries so far.
        return Retry(max=(self.rq_job.number_of_retries or 0) + 1, interval=delay, enqueue_at_front=at_front)

    def _no_rq_retry(self) -> None:
        # A producer may have set rq's --retry-max; the failure was judged final here, so rq must not
        # run it again behind our back.
        self.rq_job.retries_left = None
