#!/usr/bin/env python3
"""Whole-job benchmark of `splat` on CPU: photos in, splat out, per stage, for a few settings side by side.

What is measured: a textured room (daemon/samples/room.py) is rendered from `--views` cameras on a ring
(default 30 views at 320x240, JPEG) and served over HTTP on 127.0.0.1; then each setting runs as a real
job through the daemon's CLI (`python -m daemon run-local SPEC --out DIR`), each in a fresh process so
that its peak RSS is its own. The first table (columns = settings) shows, from the job's manifest: images
used, registered/total images and points after SfM, wall seconds per stage (download, images, sfm with
its sub-steps, train, evaluate, export) and their total, the process's wall seconds (imports included),
train seconds per step (the train stage includes its periodic PSNR evaluations), final Gaussians,
held-out PSNR before and after training, SSIM and the work-horse's peak RSS. Every 8th view is held out
(when SfM registers fewer than 16 images the job evaluates on its training views instead; the
"evaluation views" row and a note under the table say so).

Settings, with S = `--steps`: "fast" (`max_image_size` 256, SH degree 1, S steps), "default" (S steps,
images kept at the rendered size, SH degree 3) and "longer" (2S steps). Short runs densify only once
or twice (every 100 steps over the first half of the run), so Gaussian counts stay near the SfM
points' count.

The second table is `scripts/bench_raster.py`'s measurement (its functions, imported): forward +
backward of one view with the CPU tile compositor against the dense one, at 64x48 with 2k Gaussians
and 128x128 with 10k, median of `--repeats`, with the largest image and gradient differences.

Timings are never asserted. Other load on the machine slows everything (the header and footer show the
load average); `OMP_WAIT_POLICY=PASSIVE` is set for the jobs and for this process unless already set
(see bench_raster.py on why spinning OpenMP threads hurt under load).

    .venv/bin/python scripts/bench_splat.py          # 30 views, 300/600 steps: ~15 minutes on 2 cores
    .venv/bin/python scripts/bench_splat.py --quick  # 16 views, 100 steps, 1 setting: ~1 minute

(Measured on 2 cores with a load average of 2-3 from other work: 14.5 and 1.9 minutes; training is
~95% of it, at 0.5-0.7 s per step for 2k-8k Gaussians at 320x240.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
# Read by libgomp when torch loads (below, through bench_raster), so it must be set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import bench_raster  # noqa: E402
import torch  # noqa: E402

from daemon.handlers.splat.raster_cpu import composite_tiles  # noqa: E402
from daemon.handlers.splat.raster_dense import composite_dense  # noqa: E402
from daemon.samples.room import render_textured_scene  # noqa: E402

HOLDOUT_EVERY = 8
JOB_TIMEOUT_S = 3600
STAGES = ("download", "images", "sfm", "train", "evaluate", "export")
SFM_STEPS = ("extract", "match", "map", "undistort")
RASTER_CASES = ((64, 48, 2_000), (128, 128, 10_000))

Row = tuple[str, list[str]]


def settings(steps: int, quick: bool) -> dict[str, dict[str, Any]]:
    """Setting name → job params (the table's columns, in order)."""
    common = {"holdout_every": HOLDOUT_EVERY, "seed": 0}
    chosen = {
        "fast": {**common, "max_image_size": 256, "sh_degree": 1, "iterations": steps},
        "default": {**common, "iterations": steps},
        "longer": {**common, "iterations": 2 * steps},
    }
    if quick:  # the smoke test's budget: one setting shows the pipeline and the table work
        return {"fast": chosen["fast"]}
    return chosen


# -- running the jobs ----------------------------------------------------------------------------------


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (a free port); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def job_spec(name: str, base_url: str, files: list[Path], params: dict[str, Any]) -> dict[str, Any]:
    inputs = [{"url": f"{base_url}/{path.name}", "name": path.name} for path in files]
    return {"spec_version": 1, "job_id": f"bench-{name}", "kind": "splat", "inputs": inputs, "params": params}


def job_env(tmp: Path) -> dict[str, str]:
    """The daemon's settings for a local run: loopback inputs allowed, scratch folders under `tmp`."""
    env = dict(os.environ)
    env.update(
        URL_ALLOW_NETWORKS="127.0.0.1/32",
        DAEMON_WORK_DIR=str(tmp / "work"),
        DAEMON_STATE_DIR=str(tmp / "state"),
        DAEMON_ENV_FILE=str(tmp / "no-such.env"),
        REDIS_URL="redis://127.0.0.1:1/0",
        LOG_LEVEL="warning",
    )
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def run_job(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """One `run-local` in a fresh process; returns its JSON answer plus "wall_s" (or a failure)."""
    command = [sys.executable, "-m", "daemon", "run-local", json.dumps(spec), "--out", str(tmp / "out")]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=job_env(tmp), capture_output=True, text=True, timeout=JOB_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": {"code": "timeout", "message": f"over {JOB_TIMEOUT_S} s"}}
    wall = time.monotonic() - started
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        answer = {"status": "failed", "error": {"code": f"exit {done.returncode}", "message": "no JSON"}}
    if answer.get("status") != "completed":
        print(f"bench: {spec['job_id']} failed: {answer.get('error')}; stderr tail:", file=sys.stderr)
        print(done.stderr[-3000:], file=sys.stderr)
    return {**answer, "wall_s": wall}


# -- the job table ---------------------------------------------------------------------------------------


def job_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, cell) for one completed job, in table order."""
    manifest = result["result"]
    sfm, training, metrics = manifest["sfm"], manifest["training"], manifest["metrics"]
    timings = manifest["timings_s"]
    total = sum(timings.get(stage, 0.0) for stage in STAGES)
    held_out = metrics["evaluated_on"] == "held-out views"
    rows = [
        ("images used", str(manifest["images"]["used"])),
        ("registered/total", f"{sfm['registered']}/{sfm['total']}"),
        ("SfM points", str(sfm["points"])),
    ]
    for stage in STAGES:
        rows.append((f"{stage} s", f"{timings.get(stage, math.nan):.2f}"))
        if stage == "sfm":
            rows += [(f"  sfm {step} s", f"{sfm['timings_s'].get(step, math.nan):.2f}") for step in SFM_STEPS]
    rows += [
        ("total s (stages)", f"{total:.1f}"),
        ("process wall s", f"{result['wall_s']:.1f}"),
        ("training steps", str(training["steps"])),
        ("s per training step", f"{timings.get('train', math.nan) / training['steps']:.3f}"),
        ("final Gaussians", str(training["gaussians"])),
        ("evaluation views", f"{metrics['views']} {'held-out' if held_out else 'train'}"),
        ("initial held-out PSNR", f"{metrics['initial_psnr']:.2f}"),
        ("final held-out PSNR", f"{metrics['psnr']:.2f}"),
        ("SSIM", f"{metrics['ssim']:.4f}"),
        ("peak RSS (MB)", f"{manifest['peak_rss_mb']:.0f}"),
    ]
    return rows


def job_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Metrics as rows, settings as columns; a failed setting shows its error code in every cell."""
    done = {name: dict(job_rows(r)) for name, r in results.items() if r.get("status") == "completed"}
    if not done:
        return ["no setting completed"]
    labels = list(next(iter(done.values())))
    columns: list[Row] = []
    for name, result in results.items():
        code = str(result.get("error", {}).get("code", "failed"))
        columns.append((name, [done[name][label] if name in done else code for label in labels]))
    return format_table("metric", labels, columns)


def format_table(corner: str, labels: list[str], columns: list[Row]) -> list[str]:
    """Rows labelled on the left, one right-aligned column per (name, cells)."""
    left = max(len(corner), *(len(label) for label in labels))
    widths = [max(11, len(name), *(len(cell) for cell in cells)) for name, cells in columns]
    names = " ".join(f"{name:>{w}}" for (name, _), w in zip(columns, widths, strict=True))
    header = f"{corner:<{left}} | {names}"
    lines = [header, "-" * len(header)]
    for i, label in enumerate(labels):
        cells = " ".join(f"{cells[i]:>{w}}" for (_, cells), w in zip(columns, widths, strict=True))
        lines.append(f"{label:<{left}} | {cells}")
    return lines


# -- the rasterizer table -----------------------------------------------------------------------------


def raster_table(cases: tuple[tuple[int, int, int], ...], repeats: int) -> list[str]:
    """bench_raster's tile-vs-dense measurement for each (width, height, Gaussians)."""
    warm = bench_raster.make_scene(500, 32, 24)
    for compositor in (composite_tiles, composite_dense):
        bench_raster.run_once(warm, 32, 24, compositor, 8)  # first-call costs stay out of the timings
    header = f"{'size':>9} {'Gaussians':>9} | {'dense s':>8} {'tile s':>8} {'speed-up':>8} | "
    header += f"{'max |Δimage|':>12} {'max |Δgrad|':>11} {'(rel)':>7}"
    lines = [header, "-" * len(header)]
    for width, height, n in cases:
        scene = bench_raster.make_scene(n, width, height, seed=0)
        tile_s, tile = bench_raster.measure(scene, width, height, composite_tiles, repeats)
        dense_s, dense = bench_raster.measure(scene, width, height, composite_dense, repeats)
        image_diff = float((tile["images"] - dense["images"]).abs().max())
        abs_diff, rel_diff = bench_raster.grad_diff(tile["grads"], dense["grads"])
        line = f"{width}x{height}".rjust(9) + f" {n:>9} | {dense_s:>8.3f} {tile_s:>8.3f} "
        line += f"{dense_s / tile_s:>7.1f}x | {image_diff:>12.1e} {abs_diff:>11.1e} {rel_diff:>7.1e}"
        lines.append(line)
        print(f"bench: raster {width}x{height} / {n} done", flush=True)
    return lines


# -- main -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--views", type=int, default=30, help="rendered views; default 30")
    parser.add_argument("--size", default="320x240", help="rendered WIDTHxHEIGHT; default 320x240")
    parser.add_argument("--steps", type=int, default=300, help="training steps S (longer: 2S); default 300")
    parser.add_argument("--repeats", type=int, default=3, help="raster timings per cell (median); default 3")
    parser.add_argument(
        "--quick", action="store_true", help="16 views, 100 steps, the fast setting only, raster 64x48 once"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.views, args.steps, args.repeats = 16, 100, 1
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    return args


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def print_header(args: argparse.Namespace) -> None:
    print(
        f"bench: torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average {load()}",
        flush=True,
    )
    print(
        f"bench: scene: textured room (daemon/samples), {args.views} views at {args.width}x{args.height} "
        f"on a 360° ring, seed 0; every {HOLDOUT_EVERY}th view held out; S = {args.steps} steps",
        flush=True,
    )


def run_settings(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, Any]]:
    scene = render_textured_scene(tmp / "scene", count=args.views, size=(args.width, args.height))
    results: dict[str, dict[str, Any]] = {}
    with serve(tmp / "scene") as base_url:
        for name, params in settings(args.steps, args.quick).items():
            results[name] = run_job(job_spec(name, base_url, scene.paths, params), tmp / name)
            status = results[name].get("status")
            print(f"bench: {name} {status} in {results[name]['wall_s']:.0f} s, {params}", flush=True)
    return results


def footnotes(results: dict[str, dict[str, Any]]) -> list[str]:
    notes = []
    for name, result in results.items():
        metrics = result.get("result", {}).get("metrics", {})
        if metrics.get("evaluated_on", "held-out views") != "held-out views":
            notes.append(f"note: {name} was evaluated on {metrics['evaluated_on']}")
        if result.get("status") != "completed":
            notes.append(f"note: {name} failed: {result.get('error')}")
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print_header(args)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-splat-") as tmp:
        results = run_settings(args, Path(tmp))
    cases = RASTER_CASES[:1] if args.quick else RASTER_CASES
    raster = raster_table(cases, args.repeats)
    print(f"bench: load average {load()}; {time.monotonic() - started:.0f} s in all")
    print()
    print("\n".join(job_table(results) + footnotes(results)))
    print()
    print(f"forward + backward of one view, median of {args.repeats}:")
    print("\n".join(raster))
    return 0 if all(r.get("status") == "completed" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
