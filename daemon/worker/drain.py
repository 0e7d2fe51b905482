"""Draining the workers of this instance by hand: no new jobs, the running ones finish (or checkpoint and
are requeued), then the workers stop. `python -m daemon drain` runs it; `scripts/drain_instance.sh`
wraps it for systemd, which must stop the units itself (a worker that exits on its own is restarted).

Each worker is found in rq's worker registry by this host's name and its pid, sent DRAIN_SIGNAL (it
takes no more jobs and idles once its job ends), and watched through its registry entry until no job
runs. With `checkpoint`, or when `finish_timeout_s` passes first, the workers are stopped at once with
SIGTERM, which is the spot-notice path: the running job writes a checkpoint and goes back to the front
of its queue, to resume on another instance.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field

import psutil
from redis import Redis
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker, Worker

from .signals import CURRENT_JOB_FIELD, DRAIN_SIGNAL

log = logging.getLogger(__name__)

POLL_S = 1.0


@dataclass
class DrainReport:
    workers: dict[int, str] = field(default_factory=dict)
    """pid → worker name, for the workers found."""
    finished: list[str] = field(default_factory=list)
    """Jobs that ran to their end while we waited."""
    checkpointed: list[str] = field(default_factory=list)
    """Jobs still running when the workers were stopped: checkpointed and requeued by SIGTERM."""
    stopped: bool = False


def find_workers(redis: Redis, pids: list[int]) -> dict[int, BaseWorker]:
    """This host's rq workers with these pids (an unknown pid is an error: nothing to drain there)."""
    host = socket.gethostname()
    found = {
        w.pid: w
        for w in Worker.all(connection=redis, serializer=JSONSerializer)
        if w.pid in pids and w.hostname == host
    }
    missing = sorted(set(pids) - set(found))
    if missing:
        raise LookupError(f"no worker of this host registered with pid {', '.join(map(str, missing))}")
    return found


def current_job(redis: Redis, worker: BaseWorker) -> str | None:
    job_id = redis.hget(worker.key, CURRENT_JOB_FIELD)
    return job_id.decode() if isinstance(job_id, bytes) else job_id


def drain(
    redis: Redis,
    pids: list[int],
    *,
    finish_timeout_s: float,
    checkpoint: bool = False,
    stop: bool = False,
    stop_timeout_s: float = 150.0,
) -> DrainReport:
    """Drain the workers `pids`; stop them too when `stop` (without systemd), else leave them idle."""
    workers = find_workers(redis, pids)
    report = DrainReport(workers={pid: w.name for pid, w in workers.items()})
    running = {pid: current_job(redis, w) for pid, w in workers.items()}
    for pid in workers:
        os.kill(pid, DRAIN_SIGNAL)
    log.info("drain sent to %s", ", ".join(f"{w.name} (pid {pid})" for pid, w in workers.items()))
    deadline = time.monotonic() + (0 if checkpoint else finish_timeout_s)
    while any(running.values()) and time.monotonic() < deadline:
        time.sleep(POLL_S)
        for pid, worker in workers.items():
            if running[pid] and current_job(redis, worker) != running[pid]:
                log.info("%s: job %s ended", worker.name, running[pid])
                report.finished.append(str(running[pid]))
                running[pid] = None
    report.checkpointed = [str(job) for job in running.values() if job]
    if report.checkpointed:
        log.warning("still running, to be checkpointed and requeued: %s", ", ".join(report.checkpointed))
    if stop:
        stop_workers(list(workers), stop_timeout_s)
        report.stopped = True
    return report


def stop_workers(pids: list[int], timeout_s: float) -> None:
    """SIGTERM each worker and wait for it to exit (its job, if any, checkpoints and is requeued)."""
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    deadline = time.monotonic() + timeout_s
    alive = processes
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _running(p)]
    if alive:
        raise TimeoutError(f"workers still running after {timeout_s:.0f}s: {[p.pid for p in alive]}")


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie: an exited worker stays a zombie until its parent (systemd, a shell)
    reaps it, which is not us."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
