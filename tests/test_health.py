"""`/healthz` and `/metrics` over real HTTP, and job metrics recorded in forked horses
(daemon/telemetry: health.py, host.py, gpu.py, metrics.py)."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from daemon.telemetry import metrics
from daemon.telemetry.gpu import GpuProbe, visible_gpu_indices
from daemon.telemetry.health import HealthServer, WorkerState
from tests.metrics_text import parse_metrics, scrape


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def healthz(server: HealthServer) -> tuple[int, dict[str, Any]]:
    status, content_type, body = get(f"{server.url}/healthz")
    assert content_type == "application/json"
    return status, json.loads(body)


def in_forked_horse(work: Callable[[], None]) -> None:
    """Run `work` in a forked child, as rq's work-horse runs a job; fail if it raised."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> WorkerState:
    return WorkerState("gpu-1.4242", clock=clock)


@pytest.fixture
def no_gpus() -> GpuProbe:
    class NoNvml:
        def nvmlInit(self) -> None:  # noqa: N802 - NVML's name
            raise RuntimeError("NVML Shared Library Not Found")

    return GpuProbe(NoNvml())


@pytest.fixture
def server(state: WorkerState, no_gpus: GpuProbe, tmp_path: Path) -> Iterator[HealthServer]:
    with HealthServer(
        "127.0.0.1", 0, state, stale_after_s=30, disk_paths=[tmp_path / "work"], version="test", gpus=no_gpus
    ) as running:
        yield running


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Job metrics on, as the worker parent turns them on before its first fork; off again after."""
    monkeypatch.delenv(metrics.ENV_VAR, raising=False)
    folder = metrics.setup_multiprocess_dir(tmp_path / "metrics", kinds=["splat", "inspect"])
    yield folder
    metrics.reset()


# -- /healthz ------------------------------------------------------------------------------------


def test_healthz_is_ok_while_the_loop_ticks(server: HealthServer, state: WorkerState, clock: FakeClock):
    # Given a worker whose loop ticked 5 s ago
    clock.now += 20
    state.tick()
    clock.now += 5
    # When /healthz is asked
    status, body = healthz(server)
    # Then it is healthy and says who it is
    assert status == 200
    assert body["status"] == "ok"
    assert body["worker"] == "gpu-1.4242"
    assert body["pid"] == os.getpid()
    assert body["uptime_s"] == 25.0
    assert body["heartbeat_age_s"] == 5.0
    assert body["current_job"] is None
    assert body["draining"] is None
    assert body["version"] == "test"


def test_healthz_is_503_once_the_loop_is_stale(server: HealthServer, state: WorkerState, clock: FakeClock):
    state.tick()
    clock.now += 31  # past stale_after_s=30
    status, body = healthz(server)
    assert status == 503
    assert body["status"] == "stale"
    assert body["heartbeat_age_s"] == 31.0
    state.tick()
    assert healthz(server)[0] == 200


def test_healthz_says_draining_and_why(server: HealthServer, state: WorkerState):
    state.set_draining("spot rebalance notice")
    status, body = healthz(server)
    assert status == 200  # alive: a draining worker is not replaced for it
    assert body["status"] == "draining"
    assert body["draining"] == "spot rebalance notice"
    state.set_draining(None)
    assert healthz(server)[1]["status"] == "ok"


def test_healthz_shows_the_current_job_and_the_stage_a_horse_reports(
    server: HealthServer, state: WorkerState, clock: FakeClock
):
    # Given a job started by the parent, whose horse announced its stage through the metrics hook
    state.job_started("job-123", "splat")
    clock.now += 12
    metrics.set_stage_listener(state.set_stage)
    try:
        in_forked_horse(lambda: state.set_stage("train"))
    finally:
        metrics.set_stage_listener(None)
    # When /healthz is asked, Then the job and its stage show
    job = healthz(server)[1]["current_job"]
    assert job["id"] == "job-123"
    assert job["kind"] == "splat"
    assert job["stage"] == "train"
    assert job["running_s"] == 12.0
    assert job["started_at"].endswith("Z")
    # And once it has finished, nothing runs
    state.job_finished()
    assert healthz(server)[1]["current_job"] is None


def test_other_paths_are_404(server: HealthServer):
    assert get(f"{server.url}/")[0] == 404
    assert get(f"{server.url}/metrics/extra")[0] == 404


# -- /metrics: the parent's gauges ---------------------------------------------------------------


def test_metrics_has_the_worker_and_host_gauges(server: HealthServer, state: WorkerState, tmp_path: Path):
    state.job_started("job-9", "inspect")
    status, content_type, body = get(f"{server.url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    samples = parse_metrics(body.decode())
    assert samples.value("capture_worker_up") == 1.0
    assert samples.value("capture_job_running") == 1.0
    assert samples.value("capture_current_job_info", job_id="job-9", kind="inspect") == 1.0
    assert samples.value("capture_draining") == 0.0
    assert samples.value("capture_heartbeat_age_seconds") == 0.0
    assert 0.0 <= samples["capture_cpu_percent", ()] <= 100.0
    total = samples.value("capture_memory_total_bytes")
    assert total is not None and total > 0
    assert 0 < samples["capture_memory_used_bytes", ()] <= total
    path = str(tmp_path / "work")  # not created yet: measured on the disk that will hold it
    disk_total = samples["capture_disk_total_bytes", (("path", path),)]
    assert disk_total > 0
    assert 0 < samples["capture_disk_free_bytes", (("path", path),)] <= disk_total
    # When idle and stale, the gauges say so
    state.job_finished()
    state.set_draining("stopping")
    state._last_tick -= 60  # older than stale_after_s
    samples = scrape(server.url)
    assert samples.value("capture_job_running") == 0.0
    assert not samples.matching("capture_current_job_info")
    assert samples.value("capture_worker_up") == 0.0
    assert samples.value("capture_draining") == 1.0
    assert samples["capture_heartbeat_age_seconds", ()] >= 60


def test_without_nvml_there_are_no_gpu_series_and_no_error(
    state: WorkerState, caplog: pytest.LogCaptureFixture
):
    # Given this machine's real pynvml, which finds no driver here
    caplog.set_level(logging.DEBUG, logger="daemon.telemetry.gpu")
    with HealthServer("127.0.0.1", 0, state) as server:
        first, second = scrape(server.url), scrape(server.url)
    assert not {n for n in first.names() | second.names() if n.startswith("capture_gpu")}
    assert first.value("capture_worker_up") == 1.0
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not problems
    assert len([r for r in caplog.records if "NVML unavailable" in r.getMessage()]) <= 1


class FakeNvml:
    """Three GPUs, as pynvml shows them."""

    UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-cccc3333-0000"]

    def __init__(self) -> None:
        self.shut = False

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 3

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802
        return self.UUIDS[h]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:  # noqa: N802
        return SimpleNamespace(used=(h + 1) * 1000, total=24_000)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:  # noqa: N802
        if h == 2:
            raise RuntimeError("not supported")
        return SimpleNamespace(gpu=40 + h)


def test_gpu_series_cover_only_the_gpus_cuda_visible_devices_gives_this_worker(state: WorkerState):
    nvml = FakeNvml()
    probe = GpuProbe(nvml, environ={"CUDA_VISIBLE_DEVICES": "2,GPU-bbbb"})
    with HealthServer("127.0.0.1", 0, state, gpus=probe) as server:
        samples = scrape(server.url)
    assert samples.matching("capture_gpu_memory_total_bytes").keys() == {
        (("gpu", "1"), ("uuid", "GPU-bbbb2222-0000")),
        (("gpu", "2"), ("uuid", "GPU-cccc3333-0000")),
    }
    assert samples.value("capture_gpu_memory_used_bytes", gpu="2", uuid="GPU-cccc3333-0000") == 3000
    assert samples.value("capture_gpu_utilization_percent", gpu="1", uuid="GPU-bbbb2222-0000") == 41
    # a reading NVML refuses is left out, not made up
    assert not samples.matching("capture_gpu_utilization_percent", gpu="2")
    assert nvml.shut


def test_cuda_visible_devices_is_read_like_cuda_reads_it():
    uuids = FakeNvml.UUIDS
    assert visible_gpu_indices(None, uuids) == [0, 1, 2]
    assert visible_gpu_indices("1", uuids) == [1]
    assert visible_gpu_indices(" 2 , 0 ", uuids) == [2, 0]
    assert visible_gpu_indices("GPU-cccc3333-0000", uuids) == [2]
    assert visible_gpu_indices("", uuids) == []
    assert visible_gpu_indices("-1", uuids) == []
    assert visible_gpu_indices("0,7,1", uuids) == [0]  # an invalid entry ends the list
    assert visible_gpu_indices("GPU-", uuids) == []  # ambiguous prefix


# -- job metrics from forked horses --------------------------------------------------------------


def a_horse_runs(kind: str, outcome: str, stages: dict[str, float]) -> Callable[[], None]:
    def run() -> None:
        metrics.job_started(kind)
        for stage, seconds in stages.items():
            metrics.stage_started(kind, stage)
            metrics.stage_finished(kind, stage, seconds)
        metrics.job_ended(kind, outcome)

    return run


def test_job_metrics_recorded_in_forked_horses_reach_the_parents_metrics(
    metrics_dir: Path, server: HealthServer
):
    # Given two jobs run one after the other in forked horses, as rq runs them
    in_forked_horse(a_horse_runs("splat", "completed", {"fetch": 0.3, "train": 4000.0}))
    in_forked_horse(a_horse_runs("splat", "requeued", {"fetch": 0.2}))
    # And a third one whose kind no handler declares
    in_forked_horse(a_horse_runs("made-up", "failed", {}))
    # When the parent is scraped
    samples = scrape(server.url)
    # Then every outcome is counted with its labels
    assert samples.value("capture_jobs_total", kind="splat", outcome="completed") == 1
    assert samples.value("capture_jobs_total", kind="splat", outcome="requeued") == 1
    assert samples.value("capture_jobs_total", kind="other", outcome="failed") == 1
    # And stage durations land in their buckets
    assert samples.value("capture_stage_duration_seconds_count", kind="splat", stage="fetch") == 2
    assert samples.value("capture_stage_duration_seconds_sum", kind="splat", stage="fetch") == pytest.approx(
        0.5
    )
    train = {"kind": "splat", "stage": "train"}
    assert samples.value("capture_stage_duration_seconds_bucket", le="3600.0", **train) == 0
    assert samples.value("capture_stage_duration_seconds_bucket", le="7200.0", **train) == 1
    assert samples.value("capture_stage_duration_seconds_bucket", le="+Inf", **train) == 1
    # And each attempt's duration, by outcome
    assert samples.value("capture_job_duration_seconds_count", kind="splat", outcome="completed") == 1
    # And successive horses share one set of files instead of leaving two per job behind
    assert sorted(p.name for p in metrics_dir.iterdir()) == ["counter_horse.db", "histogram_horse.db"]
    # And the parent's own gauges are still there
    assert samples.value("capture_worker_up") == 1.0


def test_the_parent_can_count_an_attempt_its_horse_did_not_report(metrics_dir: Path, server: HealthServer):
    # Given a horse killed before it could say how its job ended
    in_forked_horse(lambda: metrics.job_started("splat"))
    # When the parent reports the lost attempt with the duration it measured
    metrics.job_ended("splat", "requeued", seconds=42.0)
    in_forked_horse(a_horse_runs("splat", "requeued", {}))
    # Then both attempts are counted
    samples = scrape(server.url)
    assert samples.value("capture_jobs_total", kind="splat", outcome="requeued") == 2
    assert samples.value("capture_job_duration_seconds_count", kind="splat", outcome="requeued") == 2


def test_job_metrics_are_no_ops_when_not_set_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Given no setup (run-local, a plain rq worker, unit tests)
    monkeypatch.chdir(tmp_path)
    assert metrics.multiprocess_dir() is None
    # When a job records its metrics, Then nothing happens and nothing is written
    a_horse_runs("splat", "completed", {"train": 1.0})()
    assert list(tmp_path.iterdir()) == []


def test_job_metrics_never_raise_into_a_job(metrics_dir: Path):
    # Given a metrics folder that vanished under the worker
    def broken_listener(stage: str | None) -> None:
        raise ZeroDivisionError

    metrics.set_stage_listener(broken_listener)
    for path in metrics_dir.iterdir():
        path.unlink()
    metrics_dir.rmdir()

    # When a horse records its job, Then it does not raise
    def run() -> None:
        a_horse_runs("splat", "completed", {"train": 1.0})()
        metrics.job_ended("splat", "exploded")

    in_forked_horse(run)
