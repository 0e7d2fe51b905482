"""What the benchmarks share to run one job as `python -m daemon run-local` on an upload served from
loopback: the file server, and the environment that keeps the job off Redis, Supabase and S3 (its
outputs go to a folder) and lets it download from 127.0.0.1."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """`folder`'s files over HTTP on a free loopback port: the base URL."""
    handler = type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def local_env(out: Path, state: Path, **more: str) -> dict[str, str]:
    """The environment of a `run-local` job working in `out` with its state (caches) in `state`."""
    return {**os.environ, "URL_ALLOW_NETWORKS": "127.0.0.1/32", "DAEMON_WORK_DIR": str(out / "work"),
            "DAEMON_STATE_DIR": str(state), "DAEMON_ENV_FILE": str(out / "no.env"),
            "REDIS_URL": "redis://127.0.0.1:1/0", "LOG_LEVEL": "warning", **more}  # fmt: skip
