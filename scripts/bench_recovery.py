#!/usr/bin/env python3
"""Recovery benchmark: from a spot notice to a durable checkpoint in S3 and a requeued job, and back.

For each model size (default 100k and 1M Gaussians; `--quick`: 10k and 100k) one run prints:

- checkpoint size: the file `resume.save_training` writes, `torch.save({"trainer": state_dict(),
  "history", "initial"})`, MB = 10^6 bytes. ~716 bytes per Gaussian: 59 floats of parameters, twice that
  in Adam moments, and the densification statistics (grad2d, count).
- state capture: `trainer.state_dict()` + the `torch.save` to the local work folder.
- upload+commit: `Checkpoints.add` (SHA-256 of the file, then boto3's multipart upload) and
  `Checkpoints.commit` (the fence, i.e. the ledger check, the manifest PUT, then the old-checkpoint
  cleanup: a LIST, a GET of the manifest, a LIST of blobs; there is no older checkpoint to delete
  here). The manifest PUT is the moment the checkpoint is durable ("notice → durable").
- requeue: what the runner does after the checkpoint when preempted, minus the row and webhooks:
  `Ledger.record_preemption`, `Ledger.set_status("requeued")`, and rq's push of the job to the front of
  its queue (`Queue.enqueue_job(at_front=True)`, what `Job.retry` does for our zero-delay
  `Retry(enqueue_at_front=True)`), against a private redis-server. Not covered: the Supabase row update
  and webhooks (network to other services), rq's execution bookkeeping in the same pipeline.
- notice → durable + requeued: capture + upload+commit + requeue. "Notice" is the moment the training
  loop sees the interrupt at a step boundary: the IMDS poll (every 5 s) and the step in progress are
  not counted.
- resume download+verify: `resume.restore` in a fresh work folder, as the next attempt runs it (LIST
  manifests, GET the manifest, ranged multipart download, SHA-256 check, move into place).
- restore: `resume.load_training` (`torch.load`) + `Trainer.load_state_dict` into a fresh trainer.

Both code paths are the daemon's own (`resume.save_training`, `resume.restore`, `Checkpoints`,
`S3Blobs`, the ledger); the split points come from thin timing wrappers around `Checkpoints.add/commit`
and the blob calls. The "disk" column is the baseline: the same state `torch.save`d to a local file (no
fsync, so "durable" means in the page cache: it survives the process, not the instance) and
`torch.load`ed back into a fresh trainer. Every resume is checked to give back the captured state
exactly (parameters, Adam moments, step).

The model: `init_params` sizes Gaussians by their nearest neighbours (O(N²) at 1M points) and one CPU
training step of 1M Gaussians takes about a minute even at 32x24, so an N-sized trainer is not trained.
A small trainer takes one real step at 32x24 (SH degree 3, so every parameter has Adam moments), then
its state is widened to N Gaussians with random values (incompressible, like trained floats; zeros
would flatter any compressing store) and loaded with `Trainer.load_state_dict`. What is captured is
then a real `Trainer.state_dict()` of N Gaussians.

S3 is SeaweedFS `weed mini` on loopback (tests/servers/s3.py; `--moto` for moto's server), reached
with the daemon's `s3_client` and the daemon's transfer settings: multipart above 64 MB, 16 MB parts,
10 threads (boto3's default, which the daemon keeps). For the largest size a second S3 column uses
64 MB parts (`--alt-chunk-mb`, 0 = off). Loopback S3 writes the data to the same disk again, and its
server shares the CPUs with the client: on EC2 the client runs alone and the network is the limit.
One untimed warm-up run at 1,000 Gaussians comes first (connections, SeaweedFS volume allocation), and
one untimed capture per size (the first large `torch.save` of a process was 3-5x slower than the next;
a real job has written periodic checkpoints before the notice). Timings are never asserted. Each cell
is one run (`--repeats N`: the median of N, the columns taking turns); on a shared 2-core VM the 1M
cells vary from run to run by seconds (notice → durable + requeued 7-16 s over three runs at load
averages 2.5-6, restore 0.5-3.5 s), so look at the load average in the header and footer, and repeat
before trusting a verdict near the goal.

Memory: about 3x the checkpoint size at peak (2.2 GB max RSS at 1M: the trainer, its captured copy, the
loaded copy and the restored trainer). A size needing more than 4.5x its checkpoint size in available
RAM is skipped with a note, and so is one that runs out of memory anyway.

    .venv/bin/python scripts/bench_recovery.py           # 100k and 1M: 40-90 s on 2 cores
    .venv/bin/python scripts/bench_recovery.py --quick   # 10k and 100k: 15-40 s
    .venv/bin/python scripts/bench_recovery.py --moto    # moto's server instead of SeaweedFS
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import psutil  # noqa: E402
import torch  # noqa: E402
from bench_queue import start_redis, stop_redis  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402
from redis import Redis  # noqa: E402
from rq import Queue  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from daemon.adapters.aws import s3_client  # noqa: E402
from daemon.adapters.checkpoints import Checkpoints, S3Blobs  # noqa: E402
from daemon.adapters.ledger import Ledger  # noqa: E402
from daemon.handlers.splat import resume  # noqa: E402
from daemon.handlers.splat.train import Camera, TrainConfig, Trainer  # noqa: E402
from daemon.handlers.splat.train_stage import CURVE_POINTS, Curves  # noqa: E402
from daemon.handlers.splat.workspace import Workspace  # noqa: E402
from daemon.samples.gaussians import look_at  # noqa: E402
from daemon.worker.queue import ENTRY_POINT, GuardedJob, make_queue  # noqa: E402
from tests.servers.s3 import MotoS3Server, SeaweedS3Server  # noqa: E402

SIZES = (100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
WARMUP_GAUSSIANS = 1_000
TEMPLATE_GAUSSIANS = 257
"""The small trainer's size: odd, so no other dimension of the state is mistaken for the per-Gaussian one."""
IMAGE = (32, 24)
GOAL_GAUSSIANS, GOAL_S = 1_000_000, 15.0
BYTES_PER_GAUSSIAN = 716
MEMORY_FACTOR = 4.5
MIB = 1 << 20
THRESHOLD_MB, CHUNK_MB, CONCURRENCY = 64, 16, 10
BUCKET, PREFIX = "bench-recovery", "checkpoints"

SIZE = "checkpoint size (MB)"
CAPTURE = "state capture (s)"
UPLOAD = "upload+commit (s)"
SHA = "  SHA-256 (s)"
PUT = "  upload (s)"
MANIFEST = "  manifest + cleanup (s)"
REQUEUE = "requeue (ms)"
DURABLE = "notice → durable (s)"
TOTAL = "notice → durable + requeued (s)"
FETCH = "resume download+verify (s)"
DOWNLOAD = "  download (s)"
RESTORE = "restore (s)"
RESUME = "resume total (s)"
ROWS = (SIZE, CAPTURE, UPLOAD, SHA, PUT, MANIFEST, REQUEUE, DURABLE, TOTAL, FETCH, DOWNLOAD, RESTORE, RESUME)

Row = dict[str, float]


# -- infrastructure: private Redis, loopback S3 ------------------------------------------------------


def transfer_config(chunk_mb: int) -> TransferConfig:
    """The daemon's settings (runtime.s3_store); max_concurrency is boto3's default, spelled out."""
    return TransferConfig(
        multipart_threshold=THRESHOLD_MB * MIB,
        multipart_chunksize=chunk_mb * MIB,
        max_concurrency=CONCURRENCY,
    )


@dataclass
class Bench:
    redis: Redis
    s3: Any
    tmp: Path
    checks: list[str] = field(default_factory=list)
    """Runs whose resumed state differed from the captured one, or whose job was not requeued."""


# -- the model -----------------------------------------------------------------------------------------


def template_trainer() -> Trainer:
    """A small trainer after one real step at 32x24: its state has the real layout (Adam moments for
    every parameter, SH degree 3 so shN has them too, the strategy's per-Gaussian statistics)."""
    width, height = IMAGE
    K = torch.tensor([[40.0, 0, width / 2], [0, 40.0, height / 2], [0, 0, 1]])  # noqa: N806
    view = look_at(torch.tensor([0.0, -0.5, 4.0]), torch.zeros(3))
    gen = torch.Generator().manual_seed(0)
    camera = Camera("0000.png", view, K, torch.rand(height, width, 3, generator=gen))
    # Densification starts late, so the step neither grows nor prunes the template.
    config = TrainConfig(steps=10_000, sh_degree_interval=1, refine_start_iter=1_000)
    points = torch.rand(TEMPLATE_GAUSSIANS, 3, generator=gen) * 2 - 1
    trainer = Trainer([camera], points, torch.rand(TEMPLATE_GAUSSIANS, 3, generator=gen), config)
    trainer.step = config.sh_degree  # from here on every SH band trains, so shN gets gradients
    trainer.train_step()
    return trainer


def widened(state: dict[str, Any], small: int, n: int, gen: torch.Generator) -> dict[str, Any]:
    """`state` with every per-Gaussian tensor (first dimension `small`) replaced by random values for
    `n` Gaussians. Uniform in [0, 1): non-negative, so the Adam second moments stay valid."""

    def widen(value: Any) -> Any:
        if torch.is_tensor(value) and value.dim() and value.shape[0] == small:
            return torch.rand((n, *value.shape[1:]), generator=gen, dtype=value.dtype)
        return value

    optimizers = {
        name: {**opt, "state": {i: {k: widen(v) for k, v in s.items()} for i, s in opt["state"].items()}}
        for name, opt in state["optimizers"].items()
    }
    return {
        **state,
        "params": {k: widen(v) for k, v in state["params"].items()},
        "optimizers": optimizers,
        "strategy_state": {k: widen(v) for k, v in state["strategy_state"].items()},
    }


def model_of(n: int) -> Trainer:
    trainer = template_trainer()
    gen = torch.Generator().manual_seed(n)
    trainer.load_state_dict(widened(trainer.state_dict(), TEMPLATE_GAUSSIANS, n, gen))
    moments = [o.state_dict()["state"][0] for o in trainer.optimizers.values()]
    assert all(len(m["exp_avg"]) == len(m["exp_avg_sq"]) == n for m in moments), "Adam moments missing"
    assert len(trainer.params["means"]) == n
    return trainer


def same_state(a: Trainer, b: Trainer) -> bool:
    """Whether two trainers hold the same step, parameters and Adam moments, bit for bit."""
    if a.step != b.step:
        return False
    for name in a.params:
        sa, sb = a.optimizers[name].state_dict()["state"][0], b.optimizers[name].state_dict()["state"][0]
        tensors = [(a.params[name], b.params[name])] + [(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq")]
        if not all(torch.equal(x.detach(), y.detach()) for x, y in tensors):
            return False
    return True


def progress_of(trainer: Trainer) -> dict[str, Any]:
    """What the training loop checkpoints: the state plus a full set of curve points and metrics."""
    history = {k: [float(i) for i in range(CURVE_POINTS)] for k in Curves.KEYS}
    return {"history": history, "initial": {"psnr": 18.0, "ssim": 0.6}, "trainer": trainer.state_dict()}


# -- timing wrappers around the daemon's checkpoint code ------------------------------------------------


class TimedBlobs:
    """The daemon's S3Blobs, noting when the file upload starts and ends, when the manifest is stored,
    and how long file downloads take."""

    def __init__(self, inner: S3Blobs) -> None:
        self.inner = inner
        self.marks: dict[str, float] = {}
        self.download_s = 0.0

    def put_file(self, key: str, path: Path) -> None:
        self.marks["put_start"] = time.perf_counter()
        self.inner.put_file(key, path)
        self.marks["put_end"] = time.perf_counter()

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(key, data)
        self.marks["manifest_end"] = time.perf_counter()  # the checkpoint is durable from here on

    def get_file(self, key: str, dest: Path) -> None:
        start = time.perf_counter()
        self.inner.get_file(key, dest)
        self.download_s += time.perf_counter() - start

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def keys(self, prefix: str) -> list[str]:
        return self.inner.keys(prefix)

    def delete(self, keys: list[str]) -> None:
        self.inner.delete(keys)

    def describe(self) -> str:
        return self.inner.describe()


@dataclass
class TimedCheckpoints(Checkpoints):
    """The daemon's Checkpoints, noting when `add` and `commit` are entered and when `commit` returns."""

    marks: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, path: Path) -> Any:
        self.marks["add"] = time.perf_counter()
        return super().add(name, path)

    def commit(self, records: Any = None) -> str:
        self.marks["commit"] = time.perf_counter()
        key = super().commit(records)
        self.marks["committed"] = time.perf_counter()
        return key


# -- the job in Redis ----------------------------------------------------------------------------------


@dataclass
class RunningJob:
    """A job as a worker holds it mid-run: popped from its rq queue, its attempt counted in the ledger."""

    queue: Queue
    job: Job
    ledger: Ledger
    attempt: int

    @property
    def job_id(self) -> str:
        return str(self.job.id)

    def fence(self) -> None:
        self.ledger.check_current(self.job_id, self.attempt)


def take_job(redis: Redis, queue: Queue, job_id: str) -> RunningJob:
    """Pop the job as a worker does (LPOP) and begin an attempt in the ledger."""
    popped = Queue.dequeue_any(
        [queue], None, connection=redis, job_class=GuardedJob, serializer=JSONSerializer
    )
    assert popped is not None and popped[0].id == job_id, popped
    attempt = Ledger(redis).begin_attempt(job_id, rq_id=job_id, worker="bench")
    return RunningJob(queue, popped[0], Ledger(redis), attempt)


def running_job(redis: Redis, job_id: str) -> RunningJob:
    queue = make_queue("default", redis)
    # Never run: no worker serves this Redis, so the argument need not be a valid spec.
    queue.enqueue_call(ENTRY_POINT, args=({},), job_id=job_id, description=f"bench {job_id}")
    return take_job(redis, queue, job_id)


def requeue(running: RunningJob) -> None:
    """The runner's preemption path after the checkpoint (handle_interrupt), then rq's zero-delay retry."""
    running.ledger.record_preemption(running.job_id)
    running.ledger.set_status(running.job_id, "requeued")
    running.queue.enqueue_job(running.job, at_front=True)


# -- measurements --------------------------------------------------------------------------------------


def measure_s3(bench: Bench, trainer: Trainer, tag: str, transfer: TransferConfig) -> Row:
    job_id = f"bench-{tag}"
    running = running_job(bench.redis, job_id)
    blobs = TimedBlobs(S3Blobs(bench.s3, BUCKET, PREFIX, transfer))
    checkpoints = TimedCheckpoints(blobs, job_id, running.attempt, fence=running.fence)
    ws = Workspace(bench.tmp / job_id / "attempt-1")

    start = time.perf_counter()  # the notice has reached a step boundary
    progress = progress_of(trainer)
    resume.save_training(SimpleNamespace(checkpoints=checkpoints), ws, progress)
    saved = time.perf_counter()
    requeue(running)
    end = time.perf_counter()

    del progress
    if running.queue.get_job_ids(0, 1) != [job_id]:
        bench.checks.append(f"{tag}: job not at the front of its queue")
    m, b = checkpoints.marks, blobs.marks
    row = {
        SIZE: resume.state_path(ws).stat().st_size / 1e6,
        CAPTURE: m["add"] - start,
        UPLOAD: m["committed"] - m["add"],
        SHA: b["put_start"] - m["add"],
        PUT: b["put_end"] - b["put_start"],
        MANIFEST: m["committed"] - m["commit"],
        REQUEUE: (end - saved) * 1000,
        DURABLE: b["manifest_end"] - start,
        TOTAL: end - start,
    }
    shutil.rmtree(ws.root)  # the instance is gone, and its disk with it
    row.update(measure_s3_resume(bench, trainer, running, blobs, tag))
    return row


def measure_s3_resume(
    bench: Bench, trainer: Trainer, running: RunningJob, blobs: TimedBlobs, tag: str
) -> Row:
    """The next attempt on another machine: restore the checkpoint into a fresh folder and trainer."""
    attempt = take_job(bench.redis, running.queue, running.job_id)
    checkpoints = Checkpoints(blobs, running.job_id, attempt.attempt, fence=attempt.fence)
    ws = Workspace(bench.tmp / running.job_id / "attempt-2")
    fresh = template_trainer()
    gc.collect()

    start = time.perf_counter()
    found = resume.restore(SimpleNamespace(checkpoints=checkpoints), ws)
    fetched = time.perf_counter()
    saved = resume.load_training(ws)
    assert found and saved is not None, "the checkpoint did not come back"
    fresh.load_state_dict(saved["trainer"])
    end = time.perf_counter()

    if not same_state(trainer, fresh):
        bench.checks.append(f"{tag}: resumed state differs from the captured one")
    del saved, fresh
    checkpoints.delete_all()
    shutil.rmtree(ws.root)
    return {FETCH: fetched - start, DOWNLOAD: blobs.download_s, RESTORE: end - fetched, RESUME: end - start}


def measure_disk(bench: Bench, trainer: Trainer, tag: str) -> Row:
    """The baseline: plain torch.save of the same progress to a local file, torch.load back."""
    folder = bench.tmp / f"disk-{tag}"
    folder.mkdir()
    path = folder / "state.pt"
    start = time.perf_counter()
    progress = progress_of(trainer)
    torch.save(progress, path)
    saved_at = time.perf_counter()
    del progress

    fresh = template_trainer()
    gc.collect()
    load_start = time.perf_counter()
    loaded = torch.load(path, weights_only=True)
    fresh.load_state_dict(loaded["trainer"])
    end = time.perf_counter()

    if not same_state(trainer, fresh):
        bench.checks.append(f"{tag} disk: loaded state differs from the saved one")
    size = path.stat().st_size / 1e6
    del loaded, fresh
    shutil.rmtree(folder)
    return {
        SIZE: size,
        CAPTURE: saved_at - start,
        DURABLE: saved_at - start,
        RESTORE: end - load_start,
        RESUME: end - load_start,
    }


def warm_up_capture(bench: Bench, trainer: Trainer) -> None:
    """One untimed capture: a training process has written periodic checkpoints before a notice
    comes, and here the first large torch.save of a process was 3-5x slower than the next ones."""
    path = bench.tmp / "warmup.pt"
    torch.save(progress_of(trainer), path)
    path.unlink()
    gc.collect()


def measure_size(bench: Bench, n: int, alt_chunk_mb: int, repeats: int) -> dict[str, Row]:
    """Columns for one model size: S3 with the daemon's settings, S3 with other parts (if asked), disk;
    each cell the median of `repeats` runs, the columns taking turns."""
    trainer = model_of(n)
    warm_up_capture(bench, trainer)
    runs: dict[str, list[Row]] = {"S3": [], "disk": []}
    if alt_chunk_mb:
        runs[f"S3/{alt_chunk_mb}M"] = []
    for i in range(repeats):
        tag = f"{label(n)}-r{i}"
        runs["disk"].append(measure_disk(bench, trainer, tag))
        gc.collect()
        runs["S3"].append(measure_s3(bench, trainer, tag, transfer_config(CHUNK_MB)))
        if alt_chunk_mb:
            gc.collect()
            alt = measure_s3(bench, trainer, f"{tag}-{alt_chunk_mb}m", transfer_config(alt_chunk_mb))
            runs[f"S3/{alt_chunk_mb}M"].append(alt)
    order = ("S3", f"S3/{alt_chunk_mb}M", "disk")
    return {name: median_row(runs[name]) for name in order if name in runs}


def median_row(rows: list[Row]) -> Row:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def too_big(n: int) -> str | None:
    """Why `n` Gaussians would not fit in the available memory, if they would not."""
    need = MEMORY_FACTOR * BYTES_PER_GAUSSIAN * n
    available = psutil.virtual_memory().available
    if need <= available:
        return None
    return f"needs ~{need / 1e9:.1f} GB, {available / 1e9:.1f} GB available"


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


# -- output ----------------------------------------------------------------------------------------


def cell(row: str, value: float | None, width: int) -> str:
    if value is None:
        return f"{'-':>{width}}"
    digits = 1 if row in (SIZE, REQUEUE) else 3
    return f"{value:>{width}.{digits}f}"


def print_table(results: dict[int, dict[str, Row] | str]) -> None:
    label_w, col_w = max(len(r) for r in ROWS) + 2, 10
    groups = [(n, cols if isinstance(cols, dict) else {"S3": {}, "disk": {}}) for n, cols in results.items()]
    header1 = " " * label_w + "".join(
        f"{f'{label(n)} Gaussians':^{col_w * len(cols)}}|" for n, cols in groups
    )
    header2 = f"{'metric':<{label_w}}" + "".join(
        "".join(f"{name:>{col_w}}" for name in cols) + "|" for _, cols in groups
    )
    print(header1)
    print(header2)
    print("-" * len(header2))
    for row in ROWS:
        cells = ["".join(cell(row, c.get(row), col_w) for c in cols.values()) + "|" for _, cols in groups]
        print(f"{row:<{label_w}}" + "".join(cells))
    for n, cols in results.items():
        if isinstance(cols, str):
            print(f"{label(n)} Gaussians not measured: {cols}")
    print(
        "S3: the daemon's path to loopback S3 (16 MB parts unless the column says otherwise); disk: a\n"
        "plain torch.save / torch.load of the same state on the local disk (no fsync, gone with the\n"
        "instance). Indented rows are parts of the row above; resume = download+verify + restore."
    )


def print_goal(results: dict[int, dict[str, Row] | str], sizes: list[int]) -> None:
    text = f"goal: notice → durable + requeued < {GOAL_S:.0f} s for {label(GOAL_GAUSSIANS)} Gaussians:"
    measured = results.get(GOAL_GAUSSIANS)
    if isinstance(measured, dict):
        total = measured["S3"][TOTAL]
        print(f"{text} {'met' if total < GOAL_S else 'not met'} ({total:.1f} s)")
    elif isinstance(measured, str):
        print(f"{text} not measured ({measured})")
    else:
        print(f"{text} not measured (this run: {', '.join(label(n) for n in sizes)})")


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k Gaussians, one S3 column (~20 s)")
    parser.add_argument("--moto", action="store_true", help="moto's S3 server instead of SeaweedFS")
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="model sizes in Gaussians (default 100000 1000000)"
    )
    parser.add_argument(
        "--alt-chunk-mb",
        type=int,
        default=64,
        help="part size of the extra S3 column for the largest size; 0 = none (default 64, off with --quick)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell, median shown (default 1)")
    return parser.parse_args(argv)


def header(server: str, repeats: int) -> str:
    mem = psutil.virtual_memory()
    return (
        f"bench: torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s), "
        f"RAM {mem.total / 1e9:.1f} GB ({mem.available / 1e9:.1f} GB available), "
        f"disk {shutil.disk_usage(tempfile.gettempdir()).free / 1e9:.0f} GB free; load average {load()}\n"
        f"bench: S3 = {server} on 127.0.0.1; multipart above {THRESHOLD_MB} MB, {CHUNK_MB} MB parts, "
        f"{CONCURRENCY} threads; Redis = private redis-server; "
        f"{'one run' if repeats == 1 else f'median of {repeats} runs'} per cell"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = list(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    alt_chunk_mb = 0 if args.quick else args.alt_chunk_mb
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    server = MotoS3Server() if args.moto else SeaweedS3Server()
    redis_proc = None
    try:
        redis_proc, redis_url = start_redis(tmp)  # bench_queue's private redis-server
        redis = Redis.from_url(redis_url)
        server.start()
        server.create_bucket(BUCKET)
        s3 = s3_client(
            server.endpoint_url, server.region, access_key=server.access_key, secret_key=server.secret_key
        )
        bench = Bench(redis, s3, tmp)
        print(header("moto server" if args.moto else "SeaweedFS weed mini", args.repeats), flush=True)
        measure_s3(bench, model_of(WARMUP_GAUSSIANS), "warmup", transfer_config(CHUNK_MB))
        results: dict[int, dict[str, Row] | str] = {}
        for n in sizes:
            results[n] = run_size(bench, n, alt_chunk_mb if n == max(sizes) else 0, args.repeats)
            gc.collect()
        print(f"bench: load average {load()} (other processes' CPU use slows every column)")
        print()
        print_table(results)
        checks = "all resumed states equal the captured ones, every job requeued at the front"
        print(f"check: {'; '.join(bench.checks) if bench.checks else checks}")
        print_goal(results, sizes)
        print(f"bench: done in {time.monotonic() - started:.0f}s")
        return 1 if bench.checks else 0
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        server.stop()
        if redis_proc is not None:
            stop_redis(redis_proc)
        shutil.rmtree(tmp, ignore_errors=True)


def run_size(bench: Bench, n: int, alt_chunk_mb: int, repeats: int) -> dict[str, Row] | str:
    """The columns of one size, or why it was not measured (memory): never a crash for lack of RAM."""
    reason = too_big(n)
    if reason is None:
        print(f"bench: {label(n)} Gaussians ...", flush=True)
        try:
            return measure_size(bench, n, alt_chunk_mb, repeats)
        except MemoryError:
            reason = "out of memory (MemoryError)"
        except RuntimeError as exc:
            if "can't allocate memory" not in str(exc):  # torch's CPU allocator says it so
                raise
            reason = f"out of memory ({str(exc).splitlines()[0]})"
    print(f"bench: {label(n)} Gaussians skipped: {reason}", flush=True)
    return reason


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
