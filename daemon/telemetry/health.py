"""`/healthz` and Prometheus `/metrics`, served on a local port from the worker's parent process.

The parent never waits on a job, so it can always answer: is my main loop alive (the last tick is
recent), am I draining, what job runs now. `/metrics` adds the job metrics the work-horses record
(`daemon/metrics.py`, merged from their files) and gauges computed at scrape time: the current job, the
heartbeat age, CPU, memory, disk of the work folder and, when NVML answers, the GPUs this worker owns.

Nothing here imports torch or touches CUDA: GPU figures come from NVML (the driver), read-only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from . import metrics

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


# -- GPUs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSample:
    index: int  # NVML's index, as nvidia-smi shows it
    uuid: str
    memory_used: float | None
    memory_total: float | None
    utilization: float | None


def visible_gpu_indices(spec: str | None, uuids: list[str]) -> list[int]:
    """The NVML indices of the GPUs named by CUDA_VISIBLE_DEVICES (`spec`), given every GPU's UUID in
    NVML order. Unset: all. Like CUDA: entries are indices or (prefixes of) `GPU-…` UUIDs, and the first
    entry that names no GPU ends the list (so "" and "-1" hide every GPU). Indices are NVML's PCI order:
    set CUDA_DEVICE_ORDER=PCI_BUS_ID, or use UUIDs, so CUDA and NVML agree on which GPU is which."""
    if spec is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for entry in (part.strip() for part in spec.split(",")):
        index: int | None = None
        if entry.lstrip("-").isdigit():
            number = int(entry)
            index = number if 0 <= number < len(uuids) else None
        elif entry.lower().startswith("gpu-"):
            matches = [i for i, uuid in enumerate(uuids) if uuid.lower().startswith(entry.lower())]
            index = matches[0] if len(matches) == 1 else None
        if index is None:
            break
        if index not in chosen:
            chosen.append(index)
    return chosen


class GpuProbe:
    """Reads this worker's GPUs through NVML. No NVML (no driver, no GPU): no samples, one debug log."""

    def __init__(self, nvml: Any = None, *, environ: Mapping[str, str] | None = None) -> None:
        self._nvml = nvml
        self._environ = environ if environ is not None else os.environ
        self._handles: list[tuple[int, str, Any]] | None = None  # None: not tried yet
        self._lock = threading.Lock()

    def _open(self) -> list[tuple[int, str, Any]]:
        if self._handles is not None:
            return self._handles
        self._handles = []
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            nvml = self._nvml
            nvml.nvmlInit()
            devices = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in devices]
        except Exception as exc:
            log.debug("no GPU metrics: NVML unavailable (%s)", exc)
            return self._handles
        chosen = visible_gpu_indices(self._environ.get("CUDA_VISIBLE_DEVICES"), uuids)
        self._handles = [(i, uuids[i], devices[i]) for i in chosen]
        log.debug("GPU metrics for NVML device(s) %s", chosen)
        return self._handles

    def sample(self) -> list[GpuSample]:
        with self._lock:  # NVML calls from several scrape threads at once gain nothing
            samples = []
            for index, uuid, handle in self._open():
                used = total = util = None
                try:
                    memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                    used, total = float(memory.used), float(memory.total)
                except Exception as exc:
                    log.debug("GPU %d memory not read: %s", index, exc)
                try:
                    util = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except Exception as exc:
                    log.debug("GPU %d utilization not read: %s", index, exc)
                samples.append(GpuSample(index, uuid, used, total, util))
            return samples

    def close(self) -> None:
        with self._lock:
            if self._handles:
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
            self._handles = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- /metrics ----------------------------------------------------------------------------------


class WorkerCollector(Collector):
    """The parent's gauges, computed at each scrape."""

    def __init__(
        self,
        state: WorkerState,
        *,
        stale_after_s: float,
        disk_paths: Iterable[Path | str] = (),
        gpus: GpuProbe | None = None,
    ) -> None:
        self.state = state
        self.stale_after_s = stale_after_s
        self.disk_paths = [Path(p) for p in disk_paths]
        self.gpus = gpus
        psutil.cpu_percent(interval=None)  # primes the counter: the next call is non-blocking and real

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
        yield from self._host()
        yield from self._gpus()

    def _host(self) -> Iterator[Metric]:
        try:
            yield _gauge(
                "capture_cpu_percent",
                "Host CPU use since the previous scrape, percent of all cores.",
                float(psutil.cpu_percent(interval=None)),
            )
            memory = psutil.virtual_memory()
            yield _gauge(
                "capture_memory_used_bytes",
                "Host memory in use (total - available).",
                float(memory.total - memory.available),
            )
            yield _gauge("capture_memory_total_bytes", "Host memory.", float(memory.total))
        except Exception as exc:
            log.warning("host metrics not read: %s", exc)
        free = GaugeMetricFamily(
            "capture_disk_free_bytes", "Free space for the worker's folders.", labels=["path"]
        )
        total = GaugeMetricFamily(
            "capture_disk_total_bytes", "Size of the disk holding the folder.", labels=["path"]
        )
        for path in self.disk_paths:
            try:
                usage = psutil.disk_usage(str(_existing(path)))
            except OSError as exc:
                log.debug("disk of %s not read: %s", path, exc)
                continue
            free.add_metric([str(path)], float(usage.free))
            total.add_metric([str(path)], float(usage.total))
        yield free
        yield total

    def _gpus(self) -> Iterator[Metric]:
        samples = self.gpus.sample() if self.gpus is not None else []
        if not samples:
            return
        families = {
            "memory_used": GaugeMetricFamily(
                "capture_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu", "uuid"]
            ),
            "memory_total": GaugeMetricFamily(
                "capture_gpu_memory_total_bytes", "GPU memory.", labels=["gpu", "uuid"]
            ),
            "utilization": GaugeMetricFamily(
                "capture_gpu_utilization_percent",
                "GPU busy time over NVML's last sample period, percent.",
                labels=["gpu", "uuid"],
            ),
        }
        for sample in samples:
            for field, family in families.items():
                value = getattr(sample, field)
                if value is not None:
                    family.add_metric([str(sample.index), sample.uuid], value)
        yield from families.values()


class JobMetricsCollector(Collector):
    """The work-horses' job metrics, merged from their files at each scrape; nothing until
    `metrics.setup_multiprocess_dir` has run (so the order of setup and server start does not matter)."""

    def collect(self) -> Iterator[Metric]:
        folder = metrics.multiprocess_dir()
        if folder is None:
            return
        try:
            yield from MultiProcessCollector(None, path=str(folder)).collect()
        except Exception as exc:
            log.warning("job metrics not read from %s: %s", folder, exc)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _existing(path: Path) -> Path:
    """`path`, or its nearest existing parent (the work folder may not exist before the first job)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


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
        self.registry.register(
            WorkerCollector(self.state, stale_after_s=stale_after_s, disk_paths=disk_paths, gpus=self.gpus)
        )
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


# -- reading it back (tests, ops scripts) ------------------------------------------------------

LabelKey = tuple[tuple[str, str], ...]


class Samples(dict[tuple[str, LabelKey], float]):
    """A /metrics page as {(sample name, sorted label pairs): value}; `value()` looks one up."""

    def value(self, name: str, **labels: str) -> float | None:
        return self.get((name, tuple(sorted(labels.items()))))

    def names(self) -> set[str]:
        return {name for name, _ in self}

    def matching(self, name: str, **labels: str) -> dict[LabelKey, float]:
        """Every sample of `name` whose labels include `labels`."""
        want = set(labels.items())
        return {key: v for (n, key), v in self.items() if n == name and want <= set(key)}


def parse_metrics(text: str) -> Samples:
    """Parse Prometheus text exposition into `Samples` (histograms as their _bucket/_sum/_count)."""
    samples = Samples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def scrape(url: str, *, timeout: float = 5.0) -> Samples:
    """GET `<url>/metrics` (url: the server's base URL) and parse it."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout) as response:
        return parse_metrics(response.read().decode())
