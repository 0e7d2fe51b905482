"""`python -m daemon run-local SPEC`: one job in this process, with no queue, no Redis and no Supabase.

For operators reproducing a customer's job on a laptop or a dev GPU box, and for trying a handler's
stages on their own. The job runs the same handler code the worker runs, downloads its inputs through
the same guarded fetcher and stores outputs where the spec (or `--out`) says. What differs: progress
rows go to local JSON files (and the log), callbacks are not sent, and nothing is retried.

With `--workdir`, the work folder is kept, and a second run over it skips the stages that finished
(handlers that record their stages, like `splat`); `--until STAGE` stops after a stage.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ..adapters.rows import LocalRows
from ..adapters.runtime import Runtime
from ..adapters.storage import LocalStore
from ..config import Settings
from ..errors import JobError
from ..handlers.registry import registry
from ..logs import bind_context
from ..spec.model import JobSpec
from ..spec.tenancy import Roots, confine
from .context import JobContext, StopAfterStage, attempt_reporter
from .interrupts import Interrupts
from .report import Identity, error_fields, outputs_data

log = logging.getLogger(__name__)


def run_local(
    settings: Settings,
    spec: JobSpec[Any],
    *,
    workdir: Path | None = None,
    out_dir: Path | None = None,
    until: str | None = None,
) -> dict[str, Any]:
    """Run `spec` here; returns {"status", "outputs", "result"} or {"status": "failed", "error"}."""
    handler = registry()[spec.kind]
    confine(spec, Roots.of(settings))
    if until is not None and until not in [s.name for s in handler.stages]:
        names = ", ".join(s.name for s in handler.stages)
        raise JobError(f"--until {until}: {spec.kind} has no such stage ({names})", code="unknown_stage")
    runtime = Runtime.for_this_process(settings)
    identity = Identity.of(spec)
    bind_context(job=spec.job_id, attempt=1)
    keep = workdir is not None
    folder = workdir or settings.work_dir / spec.job_id / f"local-{int(time.time())}"
    folder.mkdir(parents=True, exist_ok=True)
    reporter = attempt_reporter(LocalRows(settings.state_dir), identity, 1, settings, outbox=None).start()
    ctx = JobContext.for_attempt(
        runtime,
        handler,
        spec,
        1,
        workdir=folder,
        reporter=reporter,
        store=LocalStore(out_dir) if out_dir is not None else runtime.output_store(spec.output),
        interrupts=Interrupts(),
        stop_after=until,
    )
    log.info("running %s locally in %s (kept: %s)", spec.kind, folder, "yes" if keep else "no")
    try:
        handler.run(ctx)
    except StopAfterStage as stop:
        reporter.close(status="running", stage=f"stopped after {stop}")
        return {"status": "stopped", "after_stage": str(stop), "workdir": str(folder)}
    except JobError as error:
        log.error("job failed: %s", error)
        reporter.close(status="failed", **error_fields(error))
        return {"status": "failed", "error": {"code": error.code, "message": error.message}}
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    outputs = outputs_data(ctx.outputs)
    reporter.close(status="completed", stage="done", progress=100, outputs=outputs, result=ctx.result)
    return {"status": "completed", "outputs": outputs, "result": ctx.result, "timings_s": ctx.timings}
