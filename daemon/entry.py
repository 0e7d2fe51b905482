"""The daemon's one entry point, named in every job: `daemon.entry.run_job`.

Kept tiny and import-light: the guard in `daemon.queue` resolves only this name, and the runner does
the rest inside the work-horse.
"""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from .adapters.runtime import Runtime
from .attempt.runner import JobRunner
from .config import Settings, load_settings

_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Called once by the worker at start-up; forked work-horses inherit it."""
    global _settings
    _settings = settings


def run_job(spec: Any) -> Any:
    global _settings
    if _settings is None:  # run by a plain `rq worker` (the benchmark's baseline, manual tests)
        _settings = load_settings()
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_job must run inside an rq job")
    return JobRunner(Runtime.for_this_process(_settings), job).run(spec)
