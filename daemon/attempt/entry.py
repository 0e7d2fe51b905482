"""The work-horse's way in: `run_job`, which every job names by its public path `daemon.entry.run_job`
(daemon/entry.py), and `configure`, with which the worker hands its settings to the horses it forks.

Kept tiny: the guard in daemon/worker/queue.py resolves only that name, and the runner does the rest.
"""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from ..adapters.runtime import Runtime
from ..config import Settings, load_settings
from .runner import JobRunner

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
