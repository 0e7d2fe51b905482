#!/usr/bin/env python3
"""SfM benchmark: which `SfmOptions` matter for CPU time, and what they cost in accuracy.

A textured room (tests/scenes.py) is rendered from N cameras on a circle at photo-like resolution
(default 30 views at 1600×1200), then `run_sfm` runs once per setting. Per setting the table shows
CPU seconds per sub-step (extract, match, map, undistort; all threads), total CPU and wall seconds,
matched pairs, registered/total, 3D points, mean reprojection error and the median / max rotation
error of the recovered cameras against the known ones after a similarity alignment on camera
centres. Cost is shown as CPU time because on a shared machine wall time swings with other load
(the per-step wall times are in the progress lines printed as each setting finishes).

Settings vary one factor at a time around a baseline (SIFT max image size 1024, 4,096 features,
exhaustive matching): max image size 640/1024/1600, max features 1024/4096/8192, and sequential
matching, plus 1600 px with 8,192 features as the quality ceiling. `--grid` runs the full 3×3×2 grid
instead. Nothing is asserted; compare ratios.

    .venv/bin/python scripts/bench_sfm.py                        # 30 views, 1600×1200: ~20 min, 2 cores
    .venv/bin/python scripts/bench_sfm.py --views 12 --size 800x600 --threads 2
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pycolmap  # noqa: E402

from daemon.errors import JobError  # noqa: E402
from daemon.handlers.splat.sfm import STEP_SPANS, SfmOptions, run_sfm  # noqa: E402
from tests import scenes  # noqa: E402

BASELINE = (1024, 4096, "exhaustive")


def settings(grid: bool) -> list[tuple[int, int, str]]:
    if grid:
        return [
            (s, f, m)
            for m in ("exhaustive", "sequential")
            for s in (640, 1024, 1600)
            for f in (1024, 4096, 8192)
        ]
    size, features, _ = BASELINE
    rows = [(s, features, "exhaustive") for s in (640, 1024, 1600)]
    rows += [(size, f, "exhaustive") for f in (1024, 8192)]
    rows += [(size, features, "sequential"), (1600, 8192, "exhaustive")]
    return rows


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(scene: scenes.Scene, workdir: Path, options: SfmOptions) -> dict[str, object]:
    """One `run_sfm`; CPU seconds per sub-step come from process CPU time sampled at each progress
    report (every 0.2 s), split at the sub-steps' progress boundaries. Under load from other
    processes CPU time is a steadier measure of cost than wall time."""
    samples: list[tuple[float, float]] = [(0.0, cpu_seconds())]
    wall = time.monotonic()
    try:
        result = run_sfm(scene.paths, workdir, options, progress=lambda f: samples.append((f, cpu_seconds())))
    except JobError as error:
        return {"error": error.code, "wall": time.monotonic() - wall}
    row: dict[str, object] = {f"{step}_wall": seconds for step, seconds in result.timings.items()}
    for step, (lo, hi) in STEP_SPANS.items():
        row[f"{step}_cpu"] = cpu_at(samples, hi) - cpu_at(samples, lo)
    row["wall"] = time.monotonic() - wall
    row["cpu"] = samples[-1][1] - samples[0][1]
    with pycolmap.Database.open(workdir / "database.db") as db:
        row["pairs"] = db.num_matched_image_pairs()
    errors = scenes.model_rotation_errors(scene, result)
    row.update(
        registered=f"{result.registered}/{result.total}",
        points=result.points,
        reproj=result.mean_reprojection_error,
        rot_median=float(np.median(errors)),
        rot_max=float(errors.max()),
    )
    return row


def cpu_at(samples: list[tuple[float, float]], fraction: float) -> float:
    """Process CPU seconds when progress first reached `fraction` (the start for 0)."""
    return next(cpu for f, cpu in samples if f >= fraction - 1e-9)


def print_table(rows: list[tuple[tuple[int, int, str], dict[str, object]]]) -> None:
    steps = list(STEP_SPANS)
    head = (
        "| SIFT size | features | matcher | "
        + " | ".join(f"{step} CPU s" for step in steps)
        + " | total CPU s | wall s | pairs | registered | points | reproj px | rot median ° | rot max ° |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for (size, features, matcher), row in rows:
        if "error" in row:
            print(f"| {size} | {features} | {matcher} | failed: {row['error']} after {row['wall']:.1f} s |")
            continue
        cells = [size, features, matcher]
        cells += [f"{row[f'{step}_cpu']:.1f}" for step in steps]
        cells += [f"{row['cpu']:.1f}", f"{row['wall']:.1f}"]
        cells += [row["pairs"], row["registered"], row["points"], f"{row['reproj']:.2f}"]
        cells += [f"{row['rot_median']:.4f}", f"{row['rot_max']:.4f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=30)
    parser.add_argument("--size", default="1600x1200", help="rendered photo size, WxH")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grid", action="store_true", help="full 3×3×2 grid instead of one factor at a time")
    parser.add_argument("--verbose", action="store_true", help="keep COLMAP's INFO log")
    args = parser.parse_args()
    if not args.verbose:
        pycolmap.logging.minloglevel = 2
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_sfm_") as tmp:
        started = time.monotonic()
        # Large renders: bilinear texture lookup on 2048² textures, one ray per pixel.
        scene = scenes.render_textured_scene(
            Path(tmp) / "photos",
            count=args.views,
            size=(width, height),
            seed=0,
            texture_size=2048 if max(width, height) > 800 else 512,
            supersample=1 if max(width, height) > 800 else 2,
            bilinear=max(width, height) > 800,
        )
        print(
            f"rendered {args.views} views at {width}×{height} in {time.monotonic() - started:.1f} s",
            flush=True,
        )
        base = SfmOptions(num_threads=args.threads, single_camera=True, time_limit_s=3600)
        rows = []
        for size, features, matcher in settings(args.grid):
            options = replace(base, max_image_size=size, max_num_features=features, matcher=matcher)  # type: ignore[arg-type]
            row = run_one(scene, Path(tmp) / "work", options)
            print(f"  {size} px, {features} features, {matcher}: {row}", flush=True)
            rows.append(((size, features, matcher), row))
        print()
        print(f"{args.views} views at {width}×{height}, {args.threads} threads, one shared camera")
        print_table(rows)


if __name__ == "__main__":
    main()
