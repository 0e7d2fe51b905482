"""Operating the fleet, through a real `python -m daemon worker`: what systemd hears on NOTIFY_SOCKET,
what /healthz and /metrics say while a job runs, and, on a (fake) EC2 instance of a (moto) Auto Scaling
group, the backlog published to CloudWatch and the instance's scale-in protection while it works."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from daemon.fleet.identity import GROUP_TAG_PATH, INSTANCE_ID_PATH, REGION_PATH
from daemon.fleet.imds import META_PREFIX
from tests.fixtures_daemon import WorkerProcess, enqueue_cli, wait_until
from tests.metrics_text import Samples, scrape
from tests.servers.imds import FakeIMDS
from tests.test_fleet import REGION, Moto
from tests.test_worker_faults import held_spec, slow_spec, wait_status

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket collecting every message."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []

    def poll(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))

    def count(self, key: str, value: str | None = None) -> int:
        return sum(1 for m in self.poll() if key in m and (value is None or m[key] == value))


def two_more_pings(notify_socket: NotifyListener, worker: WorkerProcess) -> None:
    """Wait for two more watchdog pings than so far (counted, not timed: a loaded machine is slow)."""
    pings = notify_socket.count("WATCHDOG", "1")
    wait_until(lambda: notify_socket.count("WATCHDOG", "1") >= pings + 2, timeout=30, message=worker.logs)


@pytest.fixture
def notify_socket(tmp_path) -> Iterator[NotifyListener]:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    yield listener
    listener.sock.close()


def test_systemd_hears_ready_watchdog_and_a_stop_that_checkpoints(
    daemon_env, file_server, start_worker, tmp_path, notify_socket
):
    # Given a worker started by "systemd" with a 6 s watchdog (its idle loop turns every
    # DAEMON_MAINTENANCE_INTERVAL_S = 2 s here; the unit's WatchdogSec=120 covers the default 30 s)
    env = {**daemon_env, "NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "6000000"}
    worker = start_worker(env)
    # Then it says READY once registered, and pings the watchdog while idle
    wait_until(lambda: notify_socket.count("READY", "1"), timeout=30, message=worker.logs)
    two_more_pings(notify_socket, worker)
    # And keeps pinging while a job runs (from the heartbeat loop, not a free-running thread)
    enqueue_cli(daemon_env, slow_spec(file_server, "sd-job", 30))
    wait_status(tmp_path, "sd-job", "running", worker=worker)
    two_more_pings(notify_socket, worker)
    assert any(m.get("STATUS", "").startswith("running job sd-job") for m in notify_socket.poll())
    # When systemd stops it (SIGTERM), it says STOPPING and asks for time to checkpoint the job
    os.kill(worker.proc.pid, signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    stop = next(m for m in notify_socket.poll() if m.get("STOPPING") == "1")
    assert stop["STATUS"] == "preempting job sd-job"
    assert int(
        next(m["EXTEND_TIMEOUT_USEC"] for m in notify_socket.poll() if "EXTEND_TIMEOUT_USEC" in m)
    ) >= (float(daemon_env["DAEMON_STOP_TIMEOUT_S"]) * 1e6)
    assert wait_status(tmp_path, "sd-job", "requeued")["error_code"] == "preempted"


def test_rq_suspend_holds_new_jobs_while_the_watchdog_stays_fed(
    daemon_env, file_server, start_worker, tmp_path, notify_socket
):
    # Given an idle worker under "systemd", suspended by an operator with `rq suspend`
    env = {**daemon_env, "NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "6000000"}
    worker = start_worker(env)
    wait_until(lambda: notify_socket.count("READY", "1"), timeout=30, message=worker.logs)
    redis = Redis.from_url(daemon_env["REDIS_URL"])
    # (rq marks it idle as it enters its wait for a job: suspended earlier, it would never dequeue one)
    wait_until(lambda: [redis.hget(key, "state") for key in redis.smembers("rq:workers")] == [b"idle"],
               timeout=60, message=worker.logs)  # fmt: skip
    rq_cli = [sys.executable, "-m", "rq.cli"]
    subprocess.run([*rq_cli, "suspend", "--url", daemon_env["REDIS_URL"]], check=True, capture_output=True)
    # When a job arrives (rq itself would let an idle worker take it: it looks only between jobs)
    enqueue_cli(daemon_env, slow_spec(file_server, "while-suspended", 0.1))
    # Then the worker hands it back and waits, feeding the watchdog (two more pings, counted)
    wait_until(lambda: "suspended (rq suspend)" in worker.logs(), timeout=30, message=worker.logs)
    assert "job while-suspended handed back to queue default: workers are suspended" in worker.logs()
    two_more_pings(notify_socket, worker)
    # And the job still waits on its queue, untouched, and the worker is alive
    assert redis.lrange("rq:queue:default", 0, -1) == [b"while-suspended"]
    assert "attempt started" not in worker.logs() and worker.proc.poll() is None
    # And after `rq resume` the worker takes it
    subprocess.run([*rq_cli, "resume", "--url", daemon_env["REDIS_URL"]], check=True, capture_output=True)
    wait_status(tmp_path, "while-suspended", "completed", worker=worker)
    assert "resumed (rq resume): taking jobs again" in worker.logs()


def test_healthz_and_metrics_during_and_after_a_job(daemon_env, file_server, start_worker, tmp_path):
    # Given a worker with its health server on a local port
    port = free_port()
    worker = start_worker({**daemon_env, "DAEMON_HEALTH_PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: f"health and metrics on {url}" in worker.logs(), timeout=30, message=worker.logs)
    # When a job runs
    enqueue_cli(daemon_env, held_spec(file_server, "health-job"))
    wait_status(tmp_path, "health-job", "running", worker=worker)
    running_since = time.monotonic()
    # Then /healthz names it and /metrics shows it running, with the host's resources
    import httpx

    health = httpx.get(f"{url}/healthz", timeout=5)
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["status"] == "ok" and body["current_job"]["id"] == "health-job"
    assert body["current_job"]["kind"] == "inspect" and body["heartbeat_age_s"] < 10
    samples = scrape(url)
    assert samples.value("capture_job_running") == 1
    assert samples.matching("capture_current_job_info", job_id="health-job", kind="inspect")
    assert samples.value("capture_memory_total_bytes") > 0 and samples.value("capture_worker_up") == 1
    held_s = time.monotonic() - running_since
    file_server.release("health-job")  # its download was held: the fetch stage lasted at least held_s
    # And once it completed, the work-horse's counts and stage timings reached the parent's /metrics, and
    # the parent no longer shows it running (the horse counts its job before it exits, the parent marks
    # it finished after: wait for both)
    wait_status(tmp_path, "health-job", "completed", worker=worker)

    def finished() -> Samples | None:
        s = scrape(url)
        counted = s.value("capture_jobs_total", kind="inspect", outcome="completed")
        return s if counted and s.value("capture_job_running") == 0 else None

    samples = wait_until(finished, timeout=10)
    for stage in ("fetch", "inspect", "store"):
        assert samples.value("capture_stage_duration_seconds_count", kind="inspect", stage=stage) == 1
    assert samples.value("capture_stage_duration_seconds_sum", kind="inspect", stage="fetch") >= held_s


@pytest.fixture
def on_ec2(imds: FakeIMDS, moto_s3, request) -> tuple[Moto, str, str, dict[str, str]]:
    """This machine as instance `i-…` of a moto Auto Scaling group, as the worker's env sees it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        moto = Moto(moto_s3)
    group = f"ops-e2e-{time.monotonic_ns()}"
    (instance,) = moto.group(group, 1)
    imds.serve(META_PREFIX + INSTANCE_ID_PATH, instance)
    imds.serve(META_PREFIX + REGION_PATH, REGION)
    imds.serve(META_PREFIX + GROUP_TAG_PATH, group)
    env = {
        "IMDS_URL": imds.url,
        "AWS_ENDPOINT_URL": moto_s3.endpoint_url,  # boto3 sends every service there
        "AWS_ACCESS_KEY_ID": "test-access-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret-key",
        "AWS_DEFAULT_REGION": REGION,
        "FLEET_METRICS_INTERVAL_S": "1",
    }
    return moto, group, instance, env


def test_a_worker_publishes_the_backlog_and_protects_its_instance_while_busy(
    daemon_env, file_server, start_worker, tmp_path, on_ec2
):
    moto, group, instance, aws = on_ec2
    env = {**daemon_env, **aws}
    # Given three jobs waiting before any worker runs
    for n in range(3):
        enqueue_cli(env, slow_spec(file_server, f"ops-{n}", 3))
    # When a worker starts on the instance
    worker = start_worker(env)
    # Then it publishes the backlog for its group (3 waiting, on 1 instance), and protects the
    # instance from scale-in while it works
    wait_until(lambda: 3.0 in moto.metric(group, "BacklogPerInstance"), timeout=30, message=worker.logs)
    assert 3.0 in moto.metric(group, "Backlog", priority="default")
    wait_until(lambda: moto.protected(instance), timeout=30, message=worker.logs)
    # And once the queue is empty and the worker idle, the backlog reads 0 and the protection goes
    for n in range(3):
        wait_status(tmp_path, f"ops-{n}", "completed", worker=worker)
    latest = lambda: moto.metric(group, "BacklogTotal", period=1)[:1]  # noqa: E731
    wait_until(lambda: latest() == [0.0], timeout=30, message=worker.logs)
    wait_until(lambda: not moto.protected(instance), timeout=40, message=worker.logs)
