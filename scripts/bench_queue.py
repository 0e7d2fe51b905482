#!/usr/bin/env python3
"""Queue benchmark: our worker (`python -m daemon worker`) against a plain `rq worker`, same Redis, same run.

What is measured, for trivial jobs (an `inspect` of one tiny JPEG served on 127.0.0.1, no SHA-256):

- Pickup latency, enqueue → running: one job at a time, enqueued while the worker is idle (the previous
  job has finished, then ~20 ms pause), N per worker (`--jobs`). The latency is `started_at - enqueued_at`
  from the job's rq hash, both written by rq itself: `enqueued_at` by `Queue.enqueue_call` in this process
  just before the push, `started_at` by the work-horse after the fork. In rq 3.0 the horse's
  `prepare_job_execution` writes `started_at` (`Job.prepare_for_execution`), `perform_job` then stamps it
  again right after that round-trip, and the success handler's `job.save()` persists that second value;
  the parent's own `job.started_at = now()` in `monitor_work_horse` stays in its memory. So the hash holds
  a horse-side time for both workers: the latency covers BLPOP wake-up, the parent's bookkeeping, fork and
  the horse's first Redis pipeline. It is split in two with the execution's `created_at` (written by the
  parent before the fork, kept in the rq Result): "dequeue" (enqueued → execution created) and
  "fork+prep" (execution created → started).
- Throughput: M jobs (`--jobs`) pushed in one Redis pipeline, jobs/s = M / (last job's `ended_at` - the
  moment the pipeline was sent).

Both workers run the same job: `daemon.entry.run_job`, enqueued as `daemon.worker.queue.enqueue` does
(the burst mirrors its arguments, since `enqueue` cannot use a pipeline). A plain worker runs it too:
`run_job` loads the settings from the environment when no worker configured them. The plain worker is
started with `-c daemon.entry`, which only makes rq's CLI import that module (it has no UPPERCASE
settings), so its parent preloads the job's code as ours does; otherwise every plain work-horse would
spend ~0.6 s importing pydantic and the handlers, which is the job's cost, not the worker's (`--plain-
cold` shows that case; the pickup latency is unaffected, `started_at` is written before the job's
function is imported).

Per round the two workers run one after the other (FLUSHALL between, a few warm-up jobs first); round 2
runs them in the opposite order so ordering effects show. Nothing is asserted: the script prints a table
and one verdict line per goal (our pickup ≤ plain rq's; our p99 < 50 ms).

Time: the "trivial" job takes ~120 ms in a fresh work-horse (httpx/PIL imports and an SSL context per
job), so the defaults (2 rounds × 2 workers × 400 jobs) take ~4-5 minutes on 2 cores; `--jobs 100` about
half that. Other load on the machine shows up as noise in both columns: compare ratios, not absolutes.

    .venv/bin/python scripts/bench_queue.py                        # defaults: 200 jobs, 2 rounds
    .venv/bin/python scripts/bench_queue.py --jobs 20 --rounds 1   # quick look
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from redis import Redis  # noqa: E402
from rq import Queue  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.results import Result  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402
from rq.utils import utcparse  # noqa: E402

from daemon.handlers import parse_job, registry  # noqa: E402
from daemon.spec.model import JobSpec, spec_to_json  # noqa: E402
from daemon.worker.queue import ENTRY_POINT, FAILURE_TTL_S, RESULT_TTL_S, enqueue, make_queue  # noqa: E402

QUEUES = ("high", "default", "low")
WARMUP_JOBS = 3
IDLE_PAUSE_S = 0.02
"""Pause between a job's end and the next enqueue, so the worker is back in BLPOP (idle pickup)."""
POLL_S = 0.005
JOB_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
WORKER_NAMES = {"plain": "plain rq", "ours": "ours"}


# -- infrastructure: private Redis, tiny JPEG over HTTP ---------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C in the terminal reaches us only; we stop it ourselves
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if Redis.from_url(url).ping():
                return proc, url
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("could not start a private redis-server (is it installed?)")


def stop_redis(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def tiny_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 120, 40)).save(out, format="JPEG", quality=80)
    return out.getvalue()


def serve_file(folder: Path, name: str, data: bytes) -> tuple[ThreadingHTTPServer, str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    (folder / name).write_bytes(data)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/{name}"


def worker_env(redis_url: str, tmp: Path) -> dict[str, str]:
    """Both workers get the same: private Redis, local rows and outputs, loopback inputs allowed."""
    dropped = ("SUPABASE_", "S3_", "SENTRY_", "AWS_", "RQ_", "DAEMON_", "CALLBACK_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(
        REDIS_URL=redis_url,
        DAEMON_ENV_FILE=str(tmp / "no.env"),
        DAEMON_WORK_DIR=str(tmp / "work"),
        DAEMON_STATE_DIR=str(tmp / "state"),
        DAEMON_OUTPUT_DIR=str(tmp / "outputs"),
        STORAGE_BACKEND="local",
        URL_ALLOW_NETWORKS="127.0.0.1/32",
        LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    return env


# -- the two workers ----------------------------------------------------------------------------------


def worker_command(kind: str, redis_url: str, *, plain_cold: bool) -> list[str]:
    if kind == "ours":
        return [sys.executable, "-m", "daemon", "worker"]
    rq_cli = Path(sys.executable).parent / "rq"
    preload = [] if plain_cold else ["-c", "daemon.entry"]
    return [str(rq_cli), "worker", "-u", redis_url, "-S", "json", "--quiet", *preload, *QUEUES]


class WorkerProcess:
    """One worker in its own session (so a terminal Ctrl-C reaches only this script), logs to a file."""

    def __init__(self, kind: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.kind = kind
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.kind} worker exited with {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait; then SIGKILL the worker and anything it forked (horse, scheduler)."""
        family = _descendants(self.proc.pid)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"bench: {self.kind} worker did not stop in {timeout:.0f}s; killing it", file=sys.stderr
                )
                self.proc.kill()
                self.proc.wait(5)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.wait(2)
            with contextlib.suppress(psutil.Error):
                child.kill()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


# -- jobs ---------------------------------------------------------------------------------------------


def make_spec(jpeg_url: str) -> JobSpec:
    return parse_job(
        {
            "spec_version": 1,
            "job_id": f"bench-{uuid.uuid4().hex[:16]}",
            "kind": "inspect",
            "inputs": [{"url": jpeg_url, "name": "tiny.jpg"}],
            "params": {"sha256": False},
        }
    )


def enqueue_burst(redis: Redis, specs: list[JobSpec]) -> tuple[float, list[str]]:
    """Push all specs in one pipeline, with the arguments `daemon.worker.queue.enqueue` uses; returns the
    wall-clock time the pipeline was sent."""
    queue = make_queue(specs[0].priority, redis)
    datas = [
        Queue.prepare_data(
            ENTRY_POINT,
            args=(spec_to_json(spec),),
            job_id=spec.job_id,
            timeout=registry()[spec.kind].timeout_s,
            result_ttl=RESULT_TTL_S,
            failure_ttl=FAILURE_TTL_S,
            description=f"{spec.kind} {spec.job_id}",
        )
        for spec in specs
    ]
    with redis.pipeline() as pipe:
        queue.enqueue_many(datas, pipeline=pipe)
        sent_at = time.time()
        pipe.execute()
    return sent_at, [spec.job_id for spec in specs]


def _text(raw: Any) -> str:
    """A Redis reply (bytes, or nothing) as text."""
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")


def _status(redis: Redis, job_id: str) -> str:
    return _text(redis.hget(f"rq:job:{job_id}", "status"))


def _fail(redis: Redis, job_id: str, worker: WorkerProcess) -> None:
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    result = job.latest_result()
    detail = result.exc_string if result is not None else "(no result)"
    raise RuntimeError(f"job {job_id} ended {job.get_status()} on the {worker.kind} worker:\n{detail}")


def wait_finished(redis: Redis, job_id: str, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = _status(redis, job_id)
        if status == "finished":
            return
        if status in ("failed", "stopped", "canceled"):
            _fail(redis, job_id, worker)
        worker.check_alive()
        time.sleep(POLL_S)
    raise RuntimeError(f"job {job_id} not finished after {JOB_TIMEOUT_S:.0f}s on the {worker.kind} worker")


def wait_all_finished(redis: Redis, total: int, queue: str, worker: WorkerProcess) -> None:
    """Until the queue's finished registry holds `total` jobs: polls two registry sizes, not every job."""
    deadline = time.monotonic() + JOB_TIMEOUT_S + 2 * total
    while time.monotonic() < deadline:
        if redis.zcard(f"rq:failed:{queue}"):
            failed = _text(redis.zrange(f"rq:failed:{queue}", 0, 0)[0])
            _fail(redis, failed, worker)
        if redis.zcard(f"rq:finished:{queue}") >= total:
            return
        worker.check_alive()
        time.sleep(0.02)
    raise RuntimeError(f"burst not finished in time on the {worker.kind} worker")


def _time(raw: Any) -> float:
    if not raw:
        raise RuntimeError("job hash lacks a timestamp")
    return utcparse(_text(raw)).timestamp()


@dataclass
class Pickup:
    total_ms: float
    dequeue_ms: float
    fork_ms: float


def pickup_of(redis: Redis, job_id: str) -> Pickup:
    enqueued, started = (_time(v) for v in redis.hmget(f"rq:job:{job_id}", ["enqueued_at", "started_at"]))
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    result = Result.fetch_latest(job, serializer=JSONSerializer)
    execution_created: datetime | None = result.execution_started_at if result else None
    created = execution_created.timestamp() if execution_created else float("nan")
    return Pickup(
        total_ms=(started - enqueued) * 1000,
        dequeue_ms=(created - enqueued) * 1000,
        fork_ms=(started - created) * 1000,
    )


# -- measurements -------------------------------------------------------------------------------------


@dataclass
class BenchContext:
    """What every measurement needs: the shared Redis and input, the workers' environment."""

    redis: Redis
    redis_url: str
    jpeg_url: str
    env: dict[str, str]
    tmp: Path
    jobs: int
    plain_cold: bool
    started: int = 0
    running: WorkerProcess | None = None


@dataclass
class Measurement:
    worker: str
    pickups: list[Pickup] = field(default_factory=list)
    jobs_per_s: float = float("nan")


def run_one_by_one(redis: Redis, jpeg_url: str, count: int, worker: WorkerProcess) -> list[str]:
    job_ids = []
    for _ in range(count):
        spec = make_spec(jpeg_url)
        enqueue(redis, spec)
        wait_finished(redis, spec.job_id, worker)
        job_ids.append(spec.job_id)
        time.sleep(IDLE_PAUSE_S)
    return job_ids


def measure_throughput(redis: Redis, jpeg_url: str, count: int, worker: WorkerProcess) -> float:
    specs = [make_spec(jpeg_url) for _ in range(count)]
    queue = specs[0].priority
    already = redis.zcard(f"rq:finished:{queue}")  # the one-by-one phase's jobs
    sent_at, job_ids = enqueue_burst(redis, specs)
    wait_all_finished(redis, already + count, queue, worker)
    with redis.pipeline() as pipe:
        for job_id in job_ids:
            pipe.hget(f"rq:job:{job_id}", "ended_at")
        last_end = max(_time(raw) for raw in pipe.execute())
    return count / (last_end - sent_at)


def measure_worker(kind: str, ctx: BenchContext) -> Measurement:
    """Start one worker on an empty Redis, warm it up, measure pickup then throughput, stop it."""
    ctx.redis.flushall()
    ctx.started += 1
    command = worker_command(kind, ctx.redis_url, plain_cold=ctx.plain_cold)
    worker = ctx.running = WorkerProcess(kind, command, ctx.env, ctx.tmp / f"{ctx.started}-{kind}.log")
    try:
        run_one_by_one(ctx.redis, ctx.jpeg_url, WARMUP_JOBS, worker)  # also waits for start-up
        ids = run_one_by_one(ctx.redis, ctx.jpeg_url, ctx.jobs, worker)
        measurement = Measurement(WORKER_NAMES[kind], [pickup_of(ctx.redis, i) for i in ids])
        measurement.jobs_per_s = measure_throughput(ctx.redis, ctx.jpeg_url, ctx.jobs, worker)
        return measurement
    finally:
        worker.stop()
        ctx.running = None


# -- report -------------------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def metrics(m: Measurement) -> dict[str, float]:
    total = [p.total_ms for p in m.pickups]
    return {
        "pickup p50 (ms)": percentile(total, 50),
        "pickup p90 (ms)": percentile(total, 90),
        "pickup p99 (ms)": percentile(total, 99),
        "pickup max (ms)": max(total),
        "  dequeue p50 (ms)": percentile([p.dequeue_ms for p in m.pickups], 50),
        "  fork+prep p50 (ms)": percentile([p.fork_ms for p in m.pickups], 50),
        "throughput (jobs/s)": m.jobs_per_s,
    }


def print_table(rounds: list[dict[str, Measurement]], orders: list[tuple[str, str]]) -> None:
    rows = list(metrics(rounds[0]["plain"]))
    label_w, col_w = max(len(r) for r in rows) + 2, 11
    header1 = " " * label_w + "".join(
        f"{f'round {i + 1} ({WORKER_NAMES[o[0]]} first)':^{3 * col_w}}|" for i, o in enumerate(orders)
    )
    header2 = f"{'metric':<{label_w}}" + "".join(
        f"{'plain rq':>{col_w}}{'ours':>{col_w}}{'ours/plain':>{col_w}}|" for _ in rounds
    )
    print(header1)
    print(header2)
    print("-" * len(header2))
    for row in rows:
        cells = []
        for r in rounds:
            plain, ours = metrics(r["plain"])[row], metrics(r["ours"])[row]
            ratio = ours / plain if plain else float("nan")
            cells.append(f"{plain:>{col_w}.2f}{ours:>{col_w}.2f}{ratio:>{col_w - 1}.2f}x|")
        print(f"{row:<{label_w}}" + "".join(cells))
    print(
        "pickup = rq's started_at - enqueued_at (horse side); dequeue = enqueued -> execution created "
        "(parent, pre-fork);\nfork+prep = execution created -> started_at. Lower is better except "
        "jobs/s, where ours/plain > 1 means ours is faster."
    )


def print_verdicts(rounds: list[dict[str, Measurement]]) -> None:
    p99s = [metrics(r["ours"])["pickup p99 (ms)"] for r in rounds]
    met = all(p < 50 for p in p99s)
    shown = ", ".join(f"{p:.1f} ms" for p in p99s)
    print(f"goal: our pickup p99 < 50 ms      -> {'MET' if met else 'NOT MET'} (per round: {shown})")
    worse = []
    for i, r in enumerate(rounds):
        mine, base = metrics(r["ours"]), metrics(r["plain"])
        for key in ("pickup p50 (ms)", "pickup p99 (ms)"):
            if mine[key] > base[key]:
                worse.append(f"round {i + 1} {key.split(' (')[0]} {mine[key] / base[key]:.2f}x")
    verdict = "MET" if not worse else "NOT MET (" + "; ".join(worse) + ")"
    print(f"goal: our pickup <= plain rq's     -> {verdict}")


# -- main ---------------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs per worker for each phase (default 200)")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs, order alternating (default 2)")
    parser.add_argument(
        "--plain-cold", action="store_true", help="don't preload daemon.entry in the plain rq worker"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs) at the end")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.rounds < 1:
        parser.error("--jobs and --rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    redis_proc = httpd = ctx = None
    try:
        redis_proc, redis_url = start_redis(tmp)
        (tmp / "files").mkdir()
        httpd, jpeg_url = serve_file(tmp / "files", "tiny.jpg", tiny_jpeg())
        ctx = BenchContext(
            Redis.from_url(redis_url),
            redis_url,
            jpeg_url,
            worker_env(redis_url, tmp),
            tmp,
            args.jobs,
            args.plain_cold,
        )
        print(
            f"bench: {args.jobs} jobs per phase, {args.rounds} round(s), Redis {redis_url}, "
            f"{os.cpu_count()} CPU(s){', plain rq cold (no preload)' if args.plain_cold else ''}",
            flush=True,
        )
        rounds, orders = [], []
        for i in range(args.rounds):
            order = ("plain", "ours") if i % 2 == 0 else ("ours", "plain")
            result = {}
            for kind in order:
                print(f"bench: round {i + 1}: {WORKER_NAMES[kind]} ...", flush=True)
                result[kind] = measure_worker(kind, ctx)
            rounds.append(result)
            orders.append(order)
        print()
        print_table(rounds, orders)
        print_verdicts(rounds)
        print(f"bench: done in {time.monotonic() - started:.0f}s")
        return 0
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleanup must not be cut short by a second Ctrl-C
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_everything(ctx.running if ctx else None, httpd, redis_proc)
        if args.keep:
            print(f"bench: worker logs kept in {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def stop_everything(
    worker: WorkerProcess | None,
    httpd: ThreadingHTTPServer | None,
    redis_proc: subprocess.Popen[bytes] | None,
) -> None:
    """The running worker (SIGTERM, then kill), the file server, Redis; then whatever we started that is
    still alive (a horse or scheduler of a worker killed mid-job), so nothing outlives the script."""
    leftovers = psutil.Process().children(recursive=True)
    if worker is not None:
        worker.stop()
    if httpd is not None:
        httpd.shutdown()
        httpd.server_close()
    if redis_proc is not None:
        stop_redis(redis_proc)
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
