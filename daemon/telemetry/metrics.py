"""Job metrics: recorded in the work-horse, served by the worker parent (`health.py`, through
`JobMetricsCollector`).

A job runs in a forked work-horse, so its counters cannot live in the parent's memory. prometheus_client's
multiprocess mode bridges the two: every process writes its samples to mmap'ed files in one folder
(PROMETHEUS_MULTIPROC_DIR) and the parent's `MultiProcessCollector` merges them at scrape time.

The rules we follow, read from prometheus_client 0.26 (`values.py`, `multiprocess.py`):
- The value class (in-memory or mmap'ed) is chosen when `prometheus_client.values` is imported, from the
  environment. The parent may import prometheus_client before it knows the folder, so
  `setup_multiprocess_dir` sets the variable *and* swaps the value class; metrics are created lazily,
  on first use in each process, after that.
- Files are named after a process identifier (default: the pid). A forking worker runs one horse per job
  for weeks, and per-pid files would pile up (two files per job) and be re-read on every scrape. rq's
  Worker runs one horse at a time, so every horse of a worker writes to the same `*_horse.db` files,
  each carrying on from the counts its predecessors left (the parent waits for a horse's death before
  forking the next). The worker parent writes to `*_parent.db`.
- Counters and histograms need no cleanup when a process dies; only live-mode gauges would
  (`mark_process_dead`), and there are none here: the parent computes its gauges at scrape time.

Every function here is a no-op until `setup_multiprocess_dir` has run in this process or an ancestor
(run-local, plain `rq worker`, unit tests), and none of them ever raises: a metric is not worth a job.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Histogram, values
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus_client's multiprocess mode keeps its files; inherited by every forked horse."""

OUTCOMES = ("completed", "failed", "requeued", "canceled", "superseded")
"""How an attempt ends, named as the runner's endings and the row statuses name them."""

DURATION_BUCKETS = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
    10800.0,
    21600.0,
)
"""Seconds, from a 0.1 s probe stage to a 6 h training (+Inf above): roughly ×2–3 per step."""

OTHER_KIND = "other"
"""The `kind` label of kinds not in the set given to setup (e.g. from a refused spec): bounds the series."""

_KIND_MAX = 64


@dataclass
class _Metrics:
    jobs: Counter
    stage_duration: Histogram
    job_duration: Histogram


_directory: Path | None = None
_parent_pid: int | None = None
_kinds: frozenset[str] | None = None
_metrics: _Metrics | None = None
_job_started_at: float | None = None
_stage_listener: Callable[[str | None], None] | None = None


# -- the worker parent -------------------------------------------------------------------------


def setup_multiprocess_dir(path: Path | str, *, kinds: Iterable[str] | None = None) -> Path:
    """Turn the job metrics on for this process and every process it forks from now on.

    Call once in the worker parent at start, before the first fork. Empties `path` (counts restart with
    the worker; Prometheus handles counter resets) and creates it. One folder per worker process: two
    workers sharing it would wipe each other's counts. `kinds`: the known job kinds; any other is
    recorded as `other`."""
    global _directory, _parent_pid, _kinds, _metrics
    folder = Path(path).resolve()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.environ[ENV_VAR] = str(folder)
    _directory = folder
    _parent_pid = os.getpid()
    _kinds = frozenset(kinds) if kinds is not None else None
    _metrics = None
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_identifier)
    log.info("job metrics kept in %s", folder)
    return folder


def multiprocess_dir() -> Path | None:
    """The folder set up by `setup_multiprocess_dir`, or None (metrics off)."""
    return _directory


class JobMetricsCollector(Collector):
    """The work-horses' job metrics, merged from their files at each scrape; nothing until
    `setup_multiprocess_dir` has run (so the order of setup and server start does not matter)."""

    def collect(self) -> Iterator[Metric]:
        folder = multiprocess_dir()
        if folder is None:
            return
        try:
            yield from MultiProcessCollector(None, path=str(folder)).collect()
        except Exception as exc:
            log.warning("job metrics not read from %s: %s", folder, exc)


def set_stage_listener(listener: Callable[[str | None], None] | None) -> None:
    """Call `listener(stage)` whenever a horse starts a stage (e.g. `WorkerState.set_stage`, which is
    visible across the fork). Set in the parent before forking; inherited by every horse."""
    global _stage_listener
    _stage_listener = listener


def reset() -> None:
    """Forget the setup in this process: metrics off again, files closed (tests; a worker that exits)."""
    global _directory, _parent_pid, _kinds, _metrics, _job_started_at, _stage_listener
    values.close_all_multiprocess_files()
    if _directory is not None and os.environ.get(ENV_VAR) == str(_directory):
        del os.environ[ENV_VAR]
    values.ValueClass = values.get_value_class()
    _directory = _parent_pid = _kinds = _metrics = _job_started_at = _stage_listener = None


def _process_identifier() -> str:
    # Distinct for processes that run at the same time (the parent, its one horse), as
    # prometheus_client requires; the same for successive horses, so their files don't pile up.
    return "parent" if os.getpid() == _parent_pid else "horse"


# -- the work-horse ----------------------------------------------------------------------------


def job_started(kind: str) -> None:
    """An attempt starts in this process: its duration is measured from now."""
    global _job_started_at
    if _directory is None:
        return
    _job_started_at = time.monotonic()


def stage_started(kind: str, stage: str) -> None:
    """A stage starts: tells the parent's /healthz which one (no metric is recorded)."""
    if _directory is None or _stage_listener is None:
        return
    try:
        _stage_listener(stage)
    except Exception:
        log.debug("stage listener failed", exc_info=True)


def stage_finished(kind: str, stage: str, seconds: float) -> None:
    """A stage ended normally after `seconds` of wall time."""
    metrics = _get()
    if metrics is None:
        return
    try:
        metrics.stage_duration.labels(kind=_kind(kind), stage=stage[:_KIND_MAX]).observe(seconds)
    except Exception:
        log.warning("stage duration not recorded", exc_info=True)


def job_ended(kind: str, outcome: str, seconds: float | None = None) -> None:
    """An attempt ended with `outcome` (one of OUTCOMES). Its duration is `seconds`, or the time since
    `job_started` in this process; without either only the count is recorded (the parent reporting a
    horse it lost can pass the duration it measured)."""
    global _job_started_at
    metrics = _get()
    if metrics is None:
        return
    try:
        if outcome not in OUTCOMES:
            log.warning("unknown job outcome %r recorded as is", outcome)
        if seconds is None and _job_started_at is not None:
            seconds = time.monotonic() - _job_started_at
        _job_started_at = None
        labels = {"kind": _kind(kind), "outcome": outcome[:_KIND_MAX]}
        metrics.jobs.labels(**labels).inc()
        if seconds is not None:
            metrics.job_duration.labels(**labels).observe(seconds)
    except Exception:
        log.warning("job outcome not recorded", exc_info=True)


# -- internals ---------------------------------------------------------------------------------


def _kind(kind: str) -> str:
    kind = str(kind)[:_KIND_MAX] or "unknown"
    if _kinds is not None and kind not in _kinds:
        return OTHER_KIND
    return kind


def _get() -> _Metrics | None:
    """This process's metric objects, created on first use (after setup, so they write to files)."""
    global _metrics
    if _directory is None:
        return None
    if _metrics is None:
        try:
            _metrics = _create()
        except Exception:
            log.warning("job metrics unavailable", exc_info=True)
            return None
    return _metrics


def _create() -> _Metrics:
    # registry=None: the samples live in the files; the parent's MultiProcessCollector is what serves
    # them, and creating these again (after `reset`) must not collide in a global registry.
    return _Metrics(
        jobs=Counter(
            "capture_jobs",
            "Attempts ended, by job kind and outcome.",
            ["kind", "outcome"],
            registry=None,
        ),
        stage_duration=Histogram(
            "capture_stage_duration_seconds",
            "Wall time of each finished stage.",
            ["kind", "stage"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        job_duration=Histogram(
            "capture_job_duration_seconds",
            "Wall time of each attempt, from start to its end, by outcome.",
            ["kind", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
    )
