"""A private, throw-away ``redis-server`` for tests.

Each instance owns a loopback port and a temp dir and never touches the machine's own Redis on 6379.
Persistence is AOF with ``appendfsync always`` (and no RDB snapshots), so ``restart()`` on the same port
and dir brings back every acknowledged write: fault tests restart Redis in the middle of a job and expect
the queue to still be there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

START_TIMEOUT = 10.0
"""Seconds to wait for PING after launch; redis-server is up in milliseconds, the margin is for busy CI."""

STOP_TIMEOUT = 10.0
"""Seconds to wait for a SIGTERM'd server to flush the AOF and exit before we SIGKILL it."""

PORT_ATTEMPTS = 5
"""Tries at a fresh port when another process grabs ours between probing and binding."""


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel's pick, so unlikely to be reused soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_redis_server() -> str:
    """The ``redis-server`` binary: ``$REDIS_SERVER`` if set, else PATH, else Debian's apt location."""
    candidates = [os.environ.get("REDIS_SERVER"), shutil.which("redis-server"), "/usr/bin/redis-server"]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise RuntimeError("redis-server not found: apt-get install redis-server, or set $REDIS_SERVER")


class RedisServer:
    """One private redis-server process; ``start``/``stop``/``kill``/``restart`` keep port and data."""

    def __init__(self, *, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.port = 0
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        """A new client for this server (callers close it; ``decode_responses`` etc. pass through)."""
        return redis.Redis.from_url(self.url, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Launch and wait for PING. The first start picks a port; later starts reuse it and the data dir."""
        if self.running:
            return self
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="test-redis-"))
        if self.port:
            try:
                self._launch()
            except _PortInUseError:
                raise RuntimeError(f"port {self.port} was taken while Redis was down") from None
            return self
        for _ in range(PORT_ATTEMPTS):
            self.port = free_port()
            try:
                self._launch()
                return self
            except _PortInUseError:
                continue
        raise RuntimeError(f"redis-server could not bind a free port; see {self._log_path()}")

    def stop(self) -> None:
        """SIGTERM (Redis fsyncs the AOF and exits), wait; SIGKILL if it hangs."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, as a crash would. With ``appendfsync always`` acknowledged writes still survive."""
        self._signal_and_wait(signal.SIGKILL)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down ``down_for`` seconds (clients see connection errors), start on the SAME port."""
        self.stop()
        if down_for > 0:
            time.sleep(down_for)
        self.start()

    def close(self) -> None:
        """Stop for good and delete the data dir."""
        self.kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------------

    def _command(self) -> list[str]:
        assert self.dir is not None
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",  # log to stdout, which goes to redis.log below
        ]  # fmt: skip

    def _log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "redis.log"

    def _launch(self) -> None:
        with open(self._log_path(), "ab") as log:
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._wait_for_ping()

    def _wait_for_ping(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    self._proc = None
                    if "Address already in use" in self._log_path().read_text(errors="replace"):
                        raise _PortInUseError()
                    raise RuntimeError(f"redis-server exited at start; see {self._log_path()}")
                try:
                    if probe.ping():
                        return
                except redis.exceptions.RedisError:
                    # Not listening yet, or still loading the AOF after a restart (LOADING error).
                    time.sleep(0.02)
        finally:
            probe.close()
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING in {START_TIMEOUT}s; see {self._log_path()}")

    def _signal_and_wait(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _PortInUseError(Exception):
    """Someone bound our probed port first; the caller retries with another."""
