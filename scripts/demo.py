#!/usr/bin/env python3
"""`make demo`: the main job end to end on embedded defaults, no AWS, no Supabase.

- Redis: REDIS_URL if set, else a private redis-server started here on a free port (and stopped).
- Inputs: sample photos generated into var/demo/files and served on 127.0.0.1 (the daemon downloads
  them like any customer URL; URL_ALLOW_NETWORKS lets it reach loopback for this demo only).
- Enqueue with `python -m daemon enqueue`, then run `python -m daemon worker --burst` until the queue
  is empty. Progress rows are printed by the worker and kept in var/state/jobs/<job id>.json; outputs
  land in var/outputs/<job id>/.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
JOB_ID = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_private_redis() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="demo-redis-")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            data_dir,
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("could not start a private redis-server (is it installed? `make test` installs it)")


def make_sample_photos(folder: Path, count: int = 8) -> list[str]:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        img = Image.new("RGB", (320, 240), (30 + 20 * i, 90, 160))
        draw = ImageDraw.Draw(img)
        draw.rectangle((40 + 10 * i, 60, 200 + 10 * i, 180), fill=(240, 200 - 15 * i, 40))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=88)
        name = f"IMG_{i + 1:04d}.jpg"
        (folder / name).write_bytes(out.getvalue())
        names.append(name)
    return names


def serve(folder: Path) -> ThreadingHTTPServer:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def main() -> int:
    env = dict(os.environ)
    redis_proc = None
    if not env.get("REDIS_URL"):
        redis_proc, env["REDIS_URL"] = start_private_redis()
        print(f"demo: started a private Redis at {env['REDIS_URL']}")
    env.setdefault("URL_ALLOW_NETWORKS", "127.0.0.1/32")
    env.setdefault("STORAGE_BACKEND", "local")
    env.setdefault("PROGRESS_MIN_INTERVAL_S", "0.05")  # a short job: show every step of progress
    env["PYTHONUNBUFFERED"] = "1"
    files = VAR / "demo" / "files"
    shutil.rmtree(files, ignore_errors=True)
    httpd = serve(files)
    try:
        names = make_sample_photos(files)
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        spec = {
            "spec_version": 1,
            "job_id": JOB_ID,
            "kind": "inspect",
            "inputs": [{"url": f"{base}/{name}", "name": name} for name in names],
            "params": {},
        }
        run = partial(subprocess.run, cwd=ROOT, env=env, check=True)
        print(f"demo: enqueue {JOB_ID} ({len(names)} photos)")
        run([sys.executable, "-m", "daemon", "enqueue", json.dumps(spec)])
        print("demo: run the worker until the queue is empty")
        run([sys.executable, "-m", "daemon", "worker", "--burst"])
        row_path = ROOT / os.environ.get("DAEMON_STATE_DIR", "var/state") / "jobs" / f"{JOB_ID}.json"
        row = json.loads(row_path.read_text())
        print(f"\ndemo: final progress row ({row_path.relative_to(ROOT)}):")
        print(json.dumps(row, indent=2, sort_keys=True))
        if row["status"] != "completed":
            return 1
        manifest = ROOT / os.environ.get("DAEMON_OUTPUT_DIR", "var/outputs") / JOB_ID / "manifest.json"
        print(f"demo: output {manifest.relative_to(ROOT)}:\n{manifest.read_text()[:1500]}")
        return 0
    finally:
        httpd.shutdown()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
