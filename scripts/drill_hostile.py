#!/usr/bin/env python3
"""A security drill: the hostile cases of issue 13 run against a live worker, and a table of what
happened to each.

Everything is real and local: a private redis-server, moto's S3 server, a callback receiver that
verifies signatures (the honest customer), a hostile HTTP server (a drip-feeding callback endpoint, a
gzip bomb, a stacked coding), and `python -m daemon worker`. The cases:

- slow-loris receiver: job A's callback URL answers one byte a second, forever. Job B, after it, calls
  back an honest receiver. B's callback must not wait for A's delivery (lanes per host, each on its own
  thread), and A's is cut at CALLBACK_TIMEOUT_S (a whole-delivery deadline) and retried.
- gzip bomb: an input of 256 MiB of zeros gzipped to ~256 KB, under a 16 MiB input cap; and one with
  two stacked codings. Both fail with their code, the worker's memory never holding the bomb.
- forged outbox item: a callback written straight into the outbox in Redis, with no valid HMAC. It
  must be dropped, never signed or sent.
- pickled checkpoint: a training-state file with a pickled callable, planted with a consistent
  manifest (someone who can write the bucket). The splat job resumes, refuses it, and the code never runs.
- cross-tenant key: owner B's job names owner A's upload (S3_INPUT_PREFIXES=uploads/{owner_id}/). Our
  CLI refuses to enqueue it; pushed past the producers, the worker fails it, having read nothing.
- id reuse: owner B's job reuses owner A's completed job id, pushed past the producers. Refused; A's
  ledger, row and outputs untouched, no callback sent for it.

Prints `case | expected | observed | ok` and exits 1 if any case did not hold. ~1-2 min on 2 cores
(the splat job is most of it).

    .venv/bin/python scripts/drill_hostile.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from daemon.adapters.ledger import Ledger  # noqa: E402
from daemon.adapters.outbox import DUE_KEY, ITEM_PREFIX  # noqa: E402
from daemon.adapters.runtime import Runtime  # noqa: E402
from daemon.config import load_settings  # noqa: E402
from daemon.handlers import parse_job  # noqa: E402
from daemon.spec.tenancy import Roots  # noqa: E402
from daemon.worker.queue import enqueue  # noqa: E402
from tests import scenes  # noqa: E402
from tests.fixtures_daemon import sample_jpeg  # noqa: E402
from tests.servers.redis_server import RedisServer  # noqa: E402
from tests.servers.s3 import MotoS3Server  # noqa: E402
from tests.servers.webhook_receiver import WebhookReceiver  # noqa: E402

OWNER_A = "0b5c7d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"
OWNER_B = "9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f"
MiB = 1024 * 1024
CALLBACK_TIMEOUT_S = 10  # the default: what a slow receiver costs its own lane per try


# -- the hostile server -----------------------------------------------------------------------------------


def gzip_bomb(decoded_mib: int) -> bytes:
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    zeros = bytes(MiB)
    return b"".join(squeeze.compress(zeros) for _ in range(decoded_mib)) + squeeze.flush()


class Hostile(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _HostileHandler)
        self.files = files
        self.bomb = gzip_bomb(256)
        self.dripping = threading.Event()  # set once a slow-loris answer is being dripped
        self.stop_dripping = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HostileHandler(BaseHTTPRequestHandler):
    server: Hostile

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        name = self.path.lstrip("/")
        if name == "bomb.jpg":
            return self._send(self.server.bomb, {"Content-Encoding": "gzip"})
        if name == "stacked.jpg":
            return self._send(
                gzip.compress(gzip.compress(sample_jpeg(3))), {"Content-Encoding": "gzip, gzip"}
            )
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return None
        return self._send(body, {})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.dripping.set()
        try:  # a status line, a byte at a time, and never the end of it
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 10_000:
                if self.server.stop_dripping.is_set():
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(1)
        except OSError:  # the daemon cut it: what it should do
            pass

    def _send(self, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


# -- the drill --------------------------------------------------------------------------------------------


class Drill:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.redis_server = RedisServer().start()
        self.s3 = MotoS3Server()
        self.s3.start()
        self.bucket = self.s3.create_bucket("drill")
        self.receiver = WebhookReceiver().start()
        scene = scenes.render_textured_scene(work / "scene", count=16, seed=0)
        files = {p.name: p.read_bytes() for p in scene.paths} | {"photo.jpg": sample_jpeg(1)}
        self.scene_names = [p.name for p in scene.paths]
        self.hostile = Hostile(files)
        self.env = self._env()
        # This process plants objects with the daemon's own storage code: boto3's chain reads these
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("AWS_")})
        self.settings = load_settings(self.env)
        self.runtime = Runtime(self.settings)
        self.redis = self.redis_server.client()
        self.worker: subprocess.Popen[bytes] | None = None
        self.results: list[tuple[str, str, str, bool]] = []

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "S3_", "SENTRY_"))}
        env.update(
            REDIS_URL=self.redis_server.url,
            DAEMON_ENV_FILE=str(self.work / "no.env"),
            DAEMON_WORK_DIR=str(self.work / "work"),
            DAEMON_STATE_DIR=str(self.work / "state"),
            STORAGE_BACKEND="s3",
            S3_BUCKET=self.bucket,
            S3_ENDPOINT_URL=self.s3.endpoint_url,
            S3_INPUT_PREFIXES="uploads/{owner_id}/",
            AWS_ACCESS_KEY_ID=self.s3.access_key,
            AWS_SECRET_ACCESS_KEY=self.s3.secret_key,
            AWS_REGION=self.s3.region,
            AWS_EC2_METADATA_DISABLED="true",
            CALLBACK_SECRET=self.receiver.secret,
            CALLBACK_TIMEOUT_S=str(CALLBACK_TIMEOUT_S),
            URL_ALLOW_NETWORKS="127.0.0.1/32",
            DOWNLOAD_MAX_BYTES=str(16 * MiB),
            OUTBOX_POLL_INTERVAL_S="0.2",
            IMDS_URL="",
            SFM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        return env

    # -- plumbing --

    def start_worker(self) -> None:
        log = (self.work / "worker.log").open("wb")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "daemon", "worker"], env=self.env, cwd=ROOT, stdout=log, stderr=log
        )

    def logs(self) -> str:
        return (self.work / "worker.log").read_text(errors="replace")

    def row(self, job_id: str) -> dict[str, Any]:
        path = self.work / "state" / "jobs" / f"{job_id}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            time.sleep(0.2)
        raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{self.logs()[-3000:]}")

    def ended(self, job_id: str) -> dict[str, Any]:
        return self.wait(
            f"{job_id} ended", lambda: (r := self.row(job_id)).get("status") in ("completed", "failed") and r
        )

    def spec(self, job_id: str, owner: str, inputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "spec_version": 1,
            "job_id": job_id,
            "kind": "inspect",
            "owner_id": owner,
            "inputs": inputs,
            **extra,
        }

    def enqueue(self, raw: dict[str, Any]) -> None:
        enqueue(self.redis, parse_job(raw), roots=Roots.of(self.settings))

    def push_raw(self, raw: dict[str, Any]) -> None:
        """Past the producers, as `rq enqueue` or anyone with Redis access could."""
        job_id = raw["job_id"]
        now = "2026-12-05T00:00:00.000000Z"
        self.redis.hset(f"rq:job:{job_id}", mapping={
            "status": "queued", "created_at": now, "enqueued_at": now, "origin": "default", "timeout": "600",
            "data": json.dumps(["daemon.entry.run_job", None, [raw], {}]), "description": job_id,
        })  # fmt: skip
        self.redis.rpush("rq:queue:default", job_id)

    def record(self, case: str, expected: str, observed: str, ok: bool) -> None:
        self.results.append((case, expected, observed, ok))

    # -- cases --

    def id_reuse_and_cross_tenant(self) -> None:
        s3 = self.s3.client()
        s3.put_object(Bucket=self.bucket, Key=f"uploads/{OWNER_A}/a.jpg", Body=sample_jpeg(1))
        self.enqueue(self.spec("victim", OWNER_A, [{"s3_key": f"uploads/{OWNER_A}/a.jpg"}],
                               callback_url=self.receiver.url))  # fmt: skip
        victim = self.ended("victim")
        # (rq records the job finished after its row says completed: a push before that is overwritten)
        self.wait("victim finished in rq", lambda: self.redis.hget("rq:job:victim", "status") == b"finished")
        outputs = s3.list_objects_v2(Bucket=self.bucket, Prefix="jobs/victim/")["Contents"]
        thief = self.spec("thief", OWNER_B, [{"s3_key": f"uploads/{OWNER_A}/a.jpg"}])
        try:
            self.enqueue(thief)
            refused_at_enqueue = "enqueued"
        except Exception as exc:
            refused_at_enqueue = getattr(exc, "code", type(exc).__name__)
        self.push_raw(thief)
        stolen = self.spec("victim", OWNER_B, [{"url": f"{self.hostile.url}/photo.jpg"}],
                           callback_url=f"{self.receiver.url}/b")  # fmt: skip
        self.push_raw(stolen)
        thief_row = self.ended("thief")
        self.wait("reused id refused", lambda: self.redis.hget("rq:job:victim", "status") == b"failed")
        entry = Ledger(self.redis).get("victim")
        untouched = (
            self.row("victim") == victim
            and entry.attempt == 1
            and s3.list_objects_v2(Bucket=self.bucket, Prefix="jobs/victim/")["Contents"] == outputs
            and not [e for e in self.receiver.events if e.path == "/b"]
        )
        self.record(
            "cross-tenant key",
            "refused at enqueue and by the worker: s3_key_not_allowed",
            f"enqueue: {refused_at_enqueue}; worker: {thief_row.get('error_code')}",
            refused_at_enqueue == "s3_key_not_allowed"
            and thief_row.get("error_code") == "s3_key_not_allowed",
        )
        self.record(
            "id reuse (another owner)",
            "job_id_in_use; victim's ledger, row, outputs untouched",
            f"{'job_id_in_use' if 'belongs to another owner' in self.logs() else '?'}; "
            f"victim attempt {entry.attempt}, row {'untouched' if untouched else 'CHANGED'}",
            untouched and "belongs to another owner" in self.logs(),
        )

    def gzip_bombs(self) -> None:
        for job_id, name in (
            ("bomb", "bomb.jpg"),
            ("stacked", "stacked.jpg"),
        ):
            self.enqueue(self.spec(job_id, OWNER_B, [{"url": f"{self.hostile.url}/{name}"}]))
        observed = {job_id: self.ended(job_id).get("error_code") for job_id in ("bomb", "stacked")}
        self.record(
            "gzip bomb (256 MiB in ~256 KB) / stacked codings",
            "input_too_large / unsupported_encoding",
            f"{observed['bomb']} / {observed['stacked']}",
            observed == {"bomb": "input_too_large", "stacked": "unsupported_encoding"},
        )

    def slow_loris(self) -> None:
        photo = [{"url": f"{self.hostile.url}/photo.jpg"}]
        self.enqueue(self.spec("drip", OWNER_B, photo, callback_url=f"{self.hostile.url}/hook"))
        self.enqueue(self.spec("honest", OWNER_B, photo, callback_url=f"{self.receiver.url}/honest"))
        self.wait("the slow receiver dripping", self.hostile.dripping.is_set)
        done = self.ended("honest")
        event = self.receiver.wait_for(
            lambda e: e.path == "/honest" and e.type == "job.completed", timeout=60
        )
        lag = event.arrived_at - _epoch(done.get("finished_at") or done.get("updated_at"))
        cut = f"no whole answer within {CALLBACK_TIMEOUT_S}s"
        self.wait("the slow delivery cut", lambda: cut in self.logs(), timeout=3 * CALLBACK_TIMEOUT_S)
        self.record(
            "slow-loris callback receiver",
            f"another host's callback not held up by it; the slow one cut at {CALLBACK_TIMEOUT_S} s, retried",
            f"honest callback {lag:.1f} s after its job ended; slow delivery cut at {CALLBACK_TIMEOUT_S} s",
            lag < CALLBACK_TIMEOUT_S,  # held up, it would have waited for the slow delivery's deadline
        )

    def forged_outbox_item(self) -> None:
        item_id = "callback:forged-1"
        # well formed (what the drainer would sign and send), but not written by the daemon: no valid HMAC
        body = json.dumps({"type": "job.completed", "data": {"job_id": "victim", "status": "completed"}})
        event = {
            "url": f"{self.receiver.url}/forged",
            "body": body,
            "type": "job.completed",
            "job_id": "victim",
        }
        envelope = {"kind": "callback", "created": time.time(), "tries": 0, "v": "x", "data": event}
        self.redis.set(ITEM_PREFIX + item_id, json.dumps(envelope))
        self.redis.zadd(DUE_KEY, {item_id: time.time()})
        self.wait("forged item claimed", lambda: self.redis.zscore(DUE_KEY, item_id) is None)
        sent = [e for e in self.receiver.attempts if e.path == "/forged"]
        kept = bool(self.redis.exists(ITEM_PREFIX + item_id))
        why = (
            "no valid HMAC"
            if f"dropping item {item_id}, never delivering it: not written by" in self.logs()
            else "?"
        )
        self.record(
            "forged outbox item (well formed, no HMAC)",
            "dropped, never signed or sent",
            f"{'kept' if kept else 'dropped'} ({why}), sent {len(sent)} time(s)",
            not sent and not kept and why != "?",
        )

    def pickled_checkpoint(self) -> None:
        mark = self.work / "code-ran"
        state = self.work / "planted-state.pt"
        torch.save({"trainer": {"step": 10}, "x": _Planted(mark)}, state)
        planted = self.runtime.checkpoints("splat-drill", 0)  # (an attempt no worker ever ran)
        planted.add("train-state.pt", state)
        planted.commit({})
        inputs = [{"url": f"{self.hostile.url}/{name}", "name": name} for name in self.scene_names]
        self.enqueue({"spec_version": 1, "job_id": "splat-drill", "kind": "splat", "owner_id": OWNER_B,
                      "inputs": inputs, "params": {"iterations": 100, "max_image_size": 256}})  # fmt: skip
        row = self.wait("splat job ended", lambda: (r := self.row("splat-drill")).get("status") in
                        ("completed", "failed") and r, timeout=600)  # fmt: skip
        refused = "training checkpoint refused" in self.logs()
        self.record(
            "pickled checkpoint",
            "refused, not run; the job trains from scratch and completes",
            f"{'refused' if refused else 'loaded'}, code ran: {mark.exists()}, job {row.get('status')}",
            refused and not mark.exists() and row.get("status") == "completed",
        )

    def run(self) -> None:
        self.start_worker()
        cases = (self.id_reuse_and_cross_tenant, self.gzip_bombs, self.slow_loris, self.forged_outbox_item)
        for case in (*cases, self.pickled_checkpoint):
            try:
                case()
            except Exception as exc:  # a case that broke is a case that did not hold
                self.record(case.__name__, "(see above)", f"{type(exc).__name__}: {str(exc)[:200]}", False)
        if self.worker is not None:
            alive = self.worker.poll() is None
            self.record("the worker served on", "alive after every case", "alive" if alive else "DIED", alive)

    def close(self) -> None:
        self.hostile.stop_dripping.set()
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            self.worker.wait(timeout=60)
        self.hostile.shutdown()
        self.receiver.stop()
        self.s3.stop()
        self.redis_server.close()


class _Planted:
    """Unpickling it touches a file: proof that code ran."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.mark,))


def _epoch(iso: str | None) -> float:
    from datetime import datetime

    return datetime.fromisoformat((iso or "").replace("Z", "+00:00")).timestamp() if iso else time.time()


def print_table(results: list[tuple[str, str, str, bool]]) -> None:
    head = ("case", "expected", "observed", "ok")
    rows = [head, *[(c, e, o, "yes" if ok else "NO") for c, e, o, ok in results]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * width for width in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder (worker log, rows)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="drill-"))
    drill = Drill(work)
    started = time.monotonic()
    try:
        drill.run()
    finally:
        drill.close()
    print_table(drill.results)
    held = sum(ok for *_, ok in drill.results)
    kept = "" if args.keep else " (removed)"
    print(
        f"\n{held}/{len(drill.results)} held in {time.monotonic() - started:.0f} s; work folder {work}{kept}"
    )
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(ok for *_, ok in drill.results) else 1


if __name__ == "__main__":
    sys.exit(main())
