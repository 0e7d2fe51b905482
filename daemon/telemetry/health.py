"""`/healthz` and Prometheus `/metrics`, served on a local port from the worker's parent process.

The parent never waits on a job, so it can always answer: is my main loop alive (the last tick is
recent), am I draining, what job runs now. `/metrics` shows, in this order, the parent's own gauges
(computed here at scrape time: the current job, the heartbeat age), the host's CPU, memory and disk of the
work folder (`host.py`), the GPUs this worker owns when NVML answers (`gpu.py`), and the job metrics the
work-horses record (`metrics.py`, merged from their files).

Nothing here imports torch or touches CUDA: GPU figures come from NVML (the driver), read-only.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .gpu import GpuCollector, GpuProbe
from .host import HostCollector
from .metrics import JobMetricsCollector

log = logging.getLogger(__name__)

DEFAULT_BIND = "127.0.0.1"
"""Local only by default: the agent, node exporter's textfile or a local Prometheus scrapes it; expose
it wider (0.0.0.0) only for an ALB/ASG health check, behind the instance's security group."""

DEFAULT_STALE_AFTER_S = 90.0
"""How old the main loop's last tick may be before /healthz says 503. The loop ticks at every rq
heartbeat: at least every DAEMON_MONITOR_INTERVAL_S (10 s) while a job runs and every dequeue timeout
(≤ DAEMON_MAINTENANCE_INTERVAL_S, 20 s) while idle; a few missed ticks mean the parent is stuck."""

_STAGE_SLOT_BYTES = 256


# -- what the worker tells us ------------------------------------------------------------------


@dataclass(frozen=True)
class CurrentJob:
    job_id: str
    kind: str
    started_at: float  # wall clock (epoch seconds)
    started_mono: float  # WorkerState's clock, for running_s


@dataclass(frozen=True)
class Snapshot:
    """What /healthz and the gauges show, read once per request."""

    worker: str
    pid: int
    uptime_s: float
    heartbeat_age_s: float
    job: CurrentJob | None
    job_running_s: float | None
    stage: str | None
    draining: str | None


class WorkerState:
    """What the worker parent reports about itself: loop ticks, the running job, draining.

    Thread-safe without a lock: each update replaces one immutable value (atomic under the GIL), so the
    HTTP threads read consistent values and a horse forked while a scrape runs inherits no held lock.
    The stage lives in a shared anonymous mapping, so `set_stage` called in a forked horse (through
    `metrics.set_stage_listener`) is seen by the parent."""

    def __init__(
        self,
        worker: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.worker = worker
        self.pid = os.getpid()
        self._clock = clock
        self._wall_clock = wall_clock
        self._started = clock()
        self._last_tick = self._started
        self._job: CurrentJob | None = None
        self._draining: str | None = None
        self._stage = mmap.mmap(-1, _STAGE_SLOT_BYTES)  # MAP_SHARED: survives fork() both ways

    def tick(self) -> None:
        """The main loop is alive (call at every loop point: rq's heartbeat, the draining idle loop)."""
        self._last_tick = self._clock()

    def job_started(self, job_id: str, kind: str | None) -> None:
        self.set_stage(None)
        self._job = CurrentJob(str(job_id), kind or "unknown", self._wall_clock(), self._clock())

    def job_finished(self) -> None:
        self._job = None
        self.set_stage(None)

    def set_draining(self, reason: str | None) -> None:
        """Taking no new jobs, and why (a spot notice, a stop request); None: not draining."""
        self._draining = reason

    def set_stage(self, stage: str | None) -> None:
        """The running job's current stage; safe to call from a forked horse."""
        data = (stage or "").encode()[: _STAGE_SLOT_BYTES - 4]
        self._stage[0:4] = struct.pack("<I", 0)  # a reader meanwhile sees no stage, never half of one
        self._stage[4 : 4 + len(data)] = data
        self._stage[0:4] = struct.pack("<I", len(data))

    def stage(self) -> str | None:
        (size,) = struct.unpack("<I", self._stage[0:4])
        raw = self._stage[4 : 4 + min(size, _STAGE_SLOT_BYTES - 4)]
        return raw.decode(errors="replace") or None

    def running_s(self) -> float | None:
        """Seconds the current job has run (e.g. the duration of an attempt its horse did not report)."""
        job = self._job
        return None if job is None else max(0.0, self._clock() - job.started_mono)

    def snapshot(self) -> Snapshot:
        now = self._clock()
        job = self._job
        return Snapshot(
            worker=self.worker,
            pid=self.pid,
            uptime_s=max(0.0, now - self._started),
            heartbeat_age_s=max(0.0, now - self._last_tick),
            job=job,
            job_running_s=None if job is None else max(0.0, now - job.started_mono),
            stage=self.stage() if job is not None else None,
            draining=self._draining,
        )


# -- /metrics ----------------------------------------------------------------------------------


class WorkerCollector(Collector):
    """The parent's own gauges, computed from `state` at each scrape."""

    def __init__(self, state: WorkerState, *, stale_after_s: float) -> None:
        self.state = state
        self.stale_after_s = stale_after_s

    def collect(self) -> Iterator[Metric]:
        snap = self.state.snapshot()
        yield _gauge(
            "capture_worker_up",
            "1 while the main loop ticks (as /healthz 200), else 0.",
            float(snap.heartbeat_age_s <= self.stale_after_s),
        )
        yield _gauge(
            "capture_heartbeat_age_seconds", "Seconds since the main loop last ticked.", snap.heartbeat_age_s
        )
        yield _gauge("capture_worker_uptime_seconds", "Seconds since the worker started.", snap.uptime_s)
        yield _gauge(
            "capture_draining",
            "1 while the worker takes no new jobs (spot notice, stopping).",
            float(snap.draining is not None),
        )
        yield _gauge(
            "capture_job_running", "1 while a job runs in a work-horse.", float(snap.job is not None)
        )
        info = GaugeMetricFamily(
            "capture_current_job_info", "The running job (1), absent when idle.", labels=["job_id", "kind"]
        )
        if snap.job is not None:
            info.add_metric([snap.job.job_id, snap.job.kind], 1.0)
        yield info


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


# -- the server --------------------------------------------------------------------------------


class HealthServer:
    """`GET /healthz` and `GET /metrics` on `bind:port` (port 0: any free one, see `.port`), from a
    daemon thread of the worker parent. `start()` raises OSError if the port is taken."""

    def __init__(
        self,
        bind: str,
        port: int,
        state: WorkerState,
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        disk_paths: Iterable[Path | str] = (),
        version: str | None = None,
        gpus: GpuProbe | None = None,
    ) -> None:
        self.bind = bind
        self.requested_port = port
        self.state = state
        self.stale_after_s = stale_after_s
        self.version = version
        self.gpus = gpus if gpus is not None else GpuProbe()
        self.registry = CollectorRegistry(auto_describe=False)
        # Registered in the order /metrics shows them.
        self.registry.register(WorkerCollector(self.state, stale_after_s=stale_after_s))
        self.registry.register(HostCollector(disk_paths))
        self.registry.register(GpuCollector(self.gpus))
        self.registry.register(JobMetricsCollector())
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            return self.requested_port
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.bind in ("", "0.0.0.0") else self.bind
        return f"http://{host}:{self.port}"

    def start(self) -> HealthServer:
        httpd = ThreadingHTTPServer((self.bind, self.requested_port), _Handler)
        httpd.daemon_threads = True
        httpd.health = self  # type: ignore[attr-defined]
        self._httpd = httpd
        # poll_interval: how long `stop()` may wait for the loop to notice (worker exit, tests).
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="health-server", daemon=True
        )
        self._thread.start()
        log.info("health and metrics on %s (/healthz, /metrics)", self.url)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None
        self.gpus.close()

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the two answers, usable without HTTP --------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of /healthz: 200 while the main loop ticks, 503 once it is stale."""
        snap = self.state.snapshot()
        stale = snap.heartbeat_age_s > self.stale_after_s
        job = None
        if snap.job is not None:
            job = {
                "id": snap.job.job_id,
                "kind": snap.job.kind,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snap.job.started_at)),
                "running_s": round(snap.job_running_s or 0.0, 1),
                "stage": snap.stage,
            }
        body = {
            "status": "stale" if stale else "draining" if snap.draining is not None else "ok",
            "worker": snap.worker,
            "pid": snap.pid,
            "uptime_s": round(snap.uptime_s, 1),
            "heartbeat_age_s": round(snap.heartbeat_age_s, 1),
            "stale_after_s": self.stale_after_s,
            "current_job": job,
            "draining": snap.draining,
            "version": self.version,
        }
        return (503 if stale else 200), body

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)


class _Handler(BaseHTTPRequestHandler):
    server_version = "capture-worker"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        health: HealthServer = self.server.health  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                status, body = health.health()
                self._send(status, "application/json", json.dumps(body).encode())
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, health.metrics_text())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /healthz or /metrics\n")
        except Exception:
            log.exception("health endpoint %s failed", path)
            self._send(500, "text/plain; charset=utf-8", b"internal error\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)
