"""Fixtures that run the daemon itself: a static file server for job inputs, and worker processes
started with `python -m daemon worker` exactly as systemd starts them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent


def sample_jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    from PIL import Image

    img = Image.new("RGB", size)
    img.putdata(
        [
            ((x * 4 + seed * 40) % 256, (y * 5 + seed * 7) % 256, (seed * 60) % 256)
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


HOLD_MAX_S = 300.0
"""A held download that nobody releases goes on after this long (a forgotten release must not hang CI)."""


class _QuietHandler(SimpleHTTPRequestHandler):
    """Static files, plus `/held/<n>/<name>`: each of the first n requests of that name sends half the
    file and waits until the test calls `FileServer.release(name)` (later ones are served at once), how
    tests get a job that is certainly still running when they kill, stop or cancel it, however loaded
    the machine; `/slow/<seconds>/<name>`: the file dripped over that many seconds, for jobs that must
    simply take a while; `/flaky/<n>/<name>`: 503 for the first n requests."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    failures: dict[str, int] = {}  # noqa: RUF012 - shared on purpose: counts across requests
    gates: dict[str, threading.Event] = {}  # noqa: RUF012 - shared on purpose: released by the tests
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = self.path.split("/")
        if len(parts) == 4 and parts[1] == "slow":
            return self._drip(float(parts[2]), parts[3])
        if len(parts) == 4 and parts[1] == "flaky":
            return self._flaky(int(parts[2]), parts[3])
        if len(parts) == 4 and parts[1] == "held":
            return self._held(int(parts[2]), parts[3])
        return super().do_GET()

    @classmethod
    def gate(cls, name: str) -> threading.Event:
        with cls.lock:
            return cls.gates.setdefault(name, threading.Event())

    def _held(self, times: int, name: str) -> None:
        with _QuietHandler.lock:
            seen = _QuietHandler.failures.get(f"held:{name}", 0)
            _QuietHandler.failures[f"held:{name}"] = seen + 1
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if seen < times:
                self.gate(name).wait(HOLD_MAX_S)
            self.wfile.write(data[len(data) // 2 :])
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _flaky(self, fail_times: int, name: str) -> None:
        """`/flaky/<n>/<name>`: 503 for the first n requests of that name, then the file."""
        seen = _QuietHandler.failures.get(name, 0)
        _QuietHandler.failures[name] = seen + 1
        if seen < fail_times:
            self.send_error(503, "try again")
            return
        self.path = f"/{name}"
        super().do_GET()

    def _drip(self, seconds: float, name: str) -> None:
        data = (Path(self.directory) / name).read_bytes()
        chunks = max(1, int(seconds * 10))
        step = max(1, len(data) // chunks + 1)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for start in range(0, len(data), step):
                self.wfile.write(data[start : start + step])
                self.wfile.flush()
                time.sleep(seconds / chunks)
        except (BrokenPipeError, ConnectionResetError):
            pass


class FileServer:
    """Serves a temp folder on 127.0.0.1: what customers' image URLs point to in tests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = partial(_QuietHandler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.base_url}/{name}"

    def flaky_url(self, name: str, fail_times: int) -> str:
        return f"{self.base_url}/flaky/{fail_times}/{name}"

    def slow_url(self, name: str, seconds: float) -> str:
        return f"{self.base_url}/slow/{seconds:g}/{name}"

    def held_url(self, name: str, times: int = 1) -> str:
        """The first `times` downloads of `name` stop half-way until `release(name)`; later ones don't."""
        return f"{self.base_url}/held/{times}/{name}"

    def release(self, name: str) -> None:
        """Let the held downloads of `name` finish, and any later one through at once."""
        _QuietHandler.gate(name).set()

    def wait_held(self, name: str, count: int = 1, timeout: float = 60.0) -> None:
        """Wait until `count` downloads of `held_url(name)` have begun: the job is then certainly inside
        its held download (a job can be "running" before it gets there; killed then, its next attempt
        would be the one held)."""
        wait_until(lambda: self.requests_of(name) >= count, timeout=timeout,
                   message=f"no download of {name} began")  # fmt: skip

    def requests_of(self, name: str) -> int:
        """How many times `held_url(name)` was asked for."""
        with _QuietHandler.lock:
            return _QuietHandler.failures.get(f"held:{name}", 0)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    server = FileServer(tmp_path_factory.mktemp("files"))
    yield server
    server.close()


class WorkerProcess:
    """`python -m daemon worker` in a subprocess, its output in a log file the test can read."""

    def __init__(self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "worker", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not in worker log:\n{self.logs()[-4000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Stop the worker and everything it started. A horse lives in a process group of its own (rq's
        setpgrp), so killing the worker alone could leave it running into the next test's Redis."""
        family: list[psutil.Process] = []
        if self.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                family = psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.send_signal(signal.SIGINT)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(family, timeout=5)
        self._log.close()


@pytest.fixture
def sentry_ingest() -> Iterator[Any]:
    from tests.servers.sentry_ingest import SentryIngest

    ingest = SentryIngest()
    yield ingest
    ingest.close()


@pytest.fixture
def daemon_env(redis_url: str, tmp_path: Path, webhook_receiver: Any) -> dict[str, str]:
    """A complete environment for a worker: private Redis, local rows and outputs under tmp_path,
    callbacks signed for the test receiver, loopback allowed for input URLs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "S3_", "SENTRY_"))}
    env.update(
        REDIS_URL=redis_url,
        DAEMON_ENV_FILE=str(tmp_path / "no.env"),
        DAEMON_WORK_DIR=str(tmp_path / "work"),
        DAEMON_STATE_DIR=str(tmp_path / "state"),
        DAEMON_OUTPUT_DIR=str(tmp_path / "outputs"),
        DAEMON_MONITOR_INTERVAL_S="1",
        DAEMON_MAINTENANCE_INTERVAL_S="2",
        DAEMON_STOP_TIMEOUT_S="10",
        JOB_RETRY_BACKOFF_S="1",
        CALLBACK_SECRET=webhook_receiver.secret,
        URL_ALLOW_NETWORKS="127.0.0.1/32",
        PROGRESS_MIN_INTERVAL_S="0.2",
        HEARTBEAT_INTERVAL_S="2",
        OUTBOX_POLL_INTERVAL_S="0.2",
        PYTHONUNBUFFERED="1",
        IMDS_URL="",  # no metadata service unless a test starts the fake one
        SFM_THREADS="1",  # reproducible SfM, so resumed and uninterrupted runs can be compared
    )
    return env


@pytest.fixture
def full_env(daemon_env, supabase_env, s3_bucket):
    """The production shape: rows in Supabase, outputs in S3, callbacks signed."""
    server, bucket = s3_bucket
    return {
        **daemon_env,
        **supabase_env,
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_REGION": server.region,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(env: dict[str, str], *args: str, name: str = "worker") -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"{name}-{len(workers)}.log", args)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def run_local(env: dict[str, str], spec: dict[str, Any], *args: str) -> tuple[dict[str, Any], str]:
    """`python -m daemon run-local SPEC ARGS…`: what it printed (JSON) and its log."""
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "run-local", json.dumps(spec), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return json.loads(done.stdout), done.stderr


def enqueue_cli(env: dict[str, str], spec: dict[str, Any]) -> None:
    """Enqueue `spec` as an operator does, with `python -m daemon enqueue`; fail with its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "enqueue", json.dumps(spec)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition not met",
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(message() if callable(message) else message)
