"""What a handler sees of the world: its spec, a scratch folder, named stages with progress, inputs
to fetch and a place to put outputs. Handlers never touch Redis, Supabase, S3 or HTTP themselves."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..adapters.checkpoints import Checkpoints
from ..adapters.outbox import Outbox
from ..adapters.rows import RowStore
from ..adapters.storage import OutputStore, StoredObject
from ..config import Settings
from ..errors import InputError
from ..handlers.base import Handler, Stage
from ..handlers.sniff import content_agrees, describe_content
from ..logs import log_context
from ..spec.model import JobSpec
from ..telemetry import metrics
from .interrupts import Interrupts
from .progress import ProgressReporter
from .report import Identity, base_row

if TYPE_CHECKING:
    from ..adapters.runtime import Runtime

log = logging.getLogger(__name__)

MILESTONES = (25, 50, 75)
"""Progress percentages that also send a `job.progress` callback (rows carry every percent)."""


class StopAfterStage(Exception):  # noqa: N818 - a requested stop, not a failure
    """Raised when the stage named by `JobContext.stop_after` has finished."""


class InputSource(Protocol):
    def fetch(
        self, item: Any, dest: Path, accept: Callable[[str, bytes], bool] | None, max_bytes: int | None = None
    ) -> Path: ...


@dataclass
class JobContext:
    spec: JobSpec[Any]
    attempt: int
    workdir: Path
    stages: tuple[Stage, ...]
    reporter: ProgressReporter
    inputs: InputSource
    store: OutputStore
    interrupts: Interrupts
    on_milestone: Callable[[int], None]
    outputs: dict[str, StoredObject] = field(default_factory=dict)
    # What the job reports back besides its outputs (the splat manifest): the runner puts it in the
    # row's `result`, the completed callback and rq's job result.
    result: dict[str, Any] | None = None
    # Wall seconds per finished stage, in order.
    timings: dict[str, float] = field(default_factory=dict)
    # End the run once this stage has finished (`run-local --until`); the worker never sets it.
    stop_after: str | None = None
    # Where the job's checkpoints go (None: this run cannot be resumed elsewhere, e.g. run-local).
    checkpoints: Checkpoints | None = None
    # Raises AttemptSuperseded when a newer attempt owns the job; called before every output upload.
    fence: Callable[[], None] = lambda: None
    # The daemon's settings, for the few that tune handlers (e.g. SFM_THREADS); None in unit tests.
    settings: Settings | None = None
    _stage_index: int = -1
    _sent_milestones: set[int] = field(default_factory=set)

    @classmethod
    def for_attempt(
        cls,
        runtime: Runtime,
        handler: Handler,
        spec: JobSpec[Any],
        attempt: int,
        *,
        workdir: Path,
        reporter: ProgressReporter,
        store: OutputStore,
        interrupts: Interrupts,
        on_milestone: Callable[[int], None] = lambda percent: None,
        checkpoints: Checkpoints | None = None,
        fence: Callable[[], None] = lambda: None,
        stop_after: str | None = None,
    ) -> JobContext:
        """The context of one attempt of `spec`, as the worker's runner and `run-local` both build it:
        the handler's stages, inputs through the runtime's guarded fetcher, the runtime's settings."""
        return cls(
            spec=spec,
            attempt=attempt,
            workdir=workdir,
            stages=handler.stages,
            reporter=reporter,
            inputs=runtime.input_source(),
            store=store,
            interrupts=interrupts,
            on_milestone=on_milestone,
            stop_after=stop_after,
            checkpoints=checkpoints,
            fence=fence,
            settings=runtime.settings,
        )

    @property
    def job_id(self) -> str:
        return str(self.spec.job_id)

    @property
    def params(self) -> Any:
        return self.spec.params

    # -- stages and progress ---------------------------------------------------------------------

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run one named stage: the row shows it, progress moves through its share, the log times it."""
        names = [s.name for s in self.stages]
        if name not in names:
            raise ValueError(f"stage {name!r} is not declared by the handler ({', '.join(names)})")
        self.interrupts.raise_if_requested()
        self._stage_index = names.index(name)
        metrics.stage_started(self.spec.kind, name)
        started = time.monotonic()
        with log_context(stage=name):
            self.reporter.update(stage=name, progress=self._percent(0.0))
            log.info("stage started")
            yield
            self.progress(1.0)
            self.timings[name] = round(time.monotonic() - started, 3)
            log.info("stage done in %.1fs", self.timings[name])
            metrics.stage_finished(self.spec.kind, name, self.timings[name])
        if name == self.stop_after:
            raise StopAfterStage(name)

    def progress(self, fraction: float) -> None:
        """Report progress within the current stage (0.0–1.0). Cheap: call it as often as you like."""
        self.interrupts.raise_if_requested()
        percent = self._percent(max(0.0, min(1.0, fraction)))
        self.reporter.update(progress=percent)
        for milestone in MILESTONES:
            if percent >= milestone and milestone not in self._sent_milestones:
                self._sent_milestones.add(milestone)
                self.on_milestone(milestone)

    def _percent(self, fraction: float) -> int:
        # Stages share 1–99: 0 is "queued", 100 is only ever written with status completed.
        total = sum(s.weight for s in self.stages) or 1.0
        done = sum(s.weight for s in self.stages[: self._stage_index])
        current = self.stages[self._stage_index].weight if self._stage_index >= 0 else 0.0
        return int(1 + 98 * (done + current * fraction) / total)

    # -- inputs and outputs ----------------------------------------------------------------------

    def fetch_inputs(
        self, accept: Callable[[str, bytes], bool] | None = None, *, max_bytes: int | None = None
    ) -> list[Path]:
        """Download every input into `workdir/inputs`, reporting progress per file; `accept` vets each
        file's first bytes, `max_bytes` lowers the daemon's per-file size cap. Together the inputs take
        at most JOB_INPUT_MAX_BYTES: each download stops as soon as the job's total would pass it."""
        dest_dir = self.workdir / "inputs"
        dest_dir.mkdir(parents=True, exist_ok=True)
        budget = self.settings.job_input_max_bytes if self.settings else None
        paths: list[Path] = []
        used = 0
        for index, item in enumerate(self.spec.inputs):
            name = getattr(item, "name", None) or f"input_{index:04d}"
            cap, budget_binds = self._input_cap(max_bytes, budget, used)
            try:
                paths.append(
                    self.inputs.fetch(item, dest_dir / name, _declared_type_check(item, accept), cap)
                )
            except InputError as exc:
                if exc.code != "input_too_large" or not budget_binds:
                    raise
                raise InputError(
                    f"inputs: together over JOB_INPUT_MAX_BYTES = {budget} bytes at input {index + 1} of "
                    f"{len(self.spec.inputs)} ({item.label}; {used} bytes before it)",
                    code="inputs_too_large",
                ) from None
            used += paths[-1].stat().st_size
            self.progress((index + 1) / len(self.spec.inputs))
        return paths

    def _input_cap(self, max_bytes: int | None, budget: int | None, used: int) -> tuple[int | None, bool]:
        """The size cap of the next input, and whether it is the job's remaining budget that sets it."""
        if budget is None or self.settings is None:
            return max_bytes, False
        left = max(0, budget - used)
        per_file = min(self.settings.download_max_bytes, max_bytes or self.settings.download_max_bytes)
        return min(per_file, left), left < per_file

    def put_output(self, name: str, path: Path, content_type: str) -> StoredObject:
        self.interrupts.raise_if_requested()
        self.fence()  # (before the upload too: a stale attempt learns it before spending the time)
        stored = self.store.put_file(self.job_id, name, path, content_type, fence=self.fence)
        self.outputs[name] = stored
        log.info("output %s stored (%d bytes) at %s", name, stored.size, stored.uri)
        return stored


def _declared_type_check(
    item: Any, accept: Callable[[str, bytes], bool] | None
) -> Callable[[str, bytes], bool] | None:
    """The input's own `content_type`, when its spec gives one, checked on its first bytes before the
    job's `accept` (which judges what the job can use): a file that is not what the producer said is
    refused, whatever the job would have made of it."""
    declared = getattr(item, "content_type", None)
    if not declared:
        return accept

    def check(content_type: str, head: bytes) -> bool:
        if content_agrees(declared, head) is False:
            raise InputError(
                f"{item.label}: the spec says {declared}, the file is {describe_content(head)}",
                code="content_type_mismatch",
            )
        return accept(content_type, head) if accept is not None else True

    return check


def attempt_reporter(
    rows: RowStore, identity: Identity, attempt: int, settings: Settings, *, outbox: Outbox | None
) -> ProgressReporter:
    """The progress reporter of one attempt, not started yet: its row begins as running, at stage
    "starting", and is written at most every PROGRESS_MIN_INTERVAL_S, heartbeating in between."""
    return ProgressReporter(
        rows,
        {**base_row(identity, attempt, settings.worker_name), "status": "running", "stage": "starting"},
        outbox=outbox,
        min_interval_s=settings.progress_min_interval_s,
        heartbeat_s=settings.heartbeat_interval_s,
    )
