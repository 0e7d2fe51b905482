#!/usr/bin/env python3
"""SfM benchmark: which `SfmOptions` matter for CPU time, and what they cost in accuracy.

A textured room (daemon/samples/room.py) is rendered from N cameras on a circle at photo-like resolution
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

`--video` compares matchers on video frames instead: an ordered, smooth, closed orbit around the box
(as a phone circling an object films it; frames at ~2 fps), rendered at each `--frames` count, and
`run_sfm` with one shared camera per matcher (exhaustive, sequential, sequential_loop). Per run: pairs
matched, wall seconds of matching and of the whole stage (and CPU seconds), registered, rotation
error median / max, and whether the first and last frames ended in the kept model (a closed loop).

    .venv/bin/python scripts/bench_sfm.py                        # 30 views, 1600×1200: ~20 min, 2 cores
    .venv/bin/python scripts/bench_sfm.py --views 12 --size 800x600 --threads 2
    .venv/bin/python scripts/bench_sfm.py --video --frames 48,96 --size 320x240   # ~2 min, 2 cores

`--photos DIR --poses FILE` runs real photos with published poses instead: pycolmap's defaults against
our stage, side by side (scripts/bench_sfm_real.py says how). `--scale 50,200,500` reports how the
stage's cost per photo grows with the count (scripts/bench_sfm_scale.py).
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
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import pycolmap  # noqa: E402
from PIL import Image  # noqa: E402

from daemon.errors import JobError  # noqa: E402
from daemon.handlers.splat.sfm import run_sfm  # noqa: E402
from daemon.handlers.splat.sfm_options import SfmOptions  # noqa: E402
from daemon.handlers.splat.sfm_supervisor import STEP_SPANS  # noqa: E402
from daemon.samples import cameras, room  # noqa: E402
from daemon.samples.textures import texture_atlas  # noqa: E402

BASELINE = (1024, 4096, "exhaustive")
VIDEO_MATCHERS = ("exhaustive", "sequential", "sequential_loop")


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


def run_one(scene: cameras.Scene, workdir: Path, options: SfmOptions) -> dict[str, object]:
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
    errors = cameras.model_rotation_errors(scene, result)
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


def render_orbit(out_dir: Path, count: int, size: tuple[int, int], seed: int = 0) -> cameras.Scene:
    """`count` frames of one full, smooth orbit around the box (radius, height and aim wander
    slowly, as a hand-held camera's do, and come back to where they started): video frames, unlike
    `cameras.ring_poses`, whose jitter is independent per view."""
    width, height = size
    focal = (width / 2) / np.tan(np.deg2rad(60.0) / 2)
    scene = cameras.Scene([], width, height, focal, focal, width / 2, height / 2)
    atlas = texture_atlas("auto", seed, 512)  # the room's textures, as render_textured_scene uses them
    out_dir.mkdir(parents=True, exist_ok=True)
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 4)
    for index in range(count):
        angle = 2 * np.pi * index / count
        radius = 4.0 + 0.3 * np.sin(2 * angle + phase[0])
        center = np.array(
            [
                radius * np.cos(angle - np.pi / 2),
                radius * np.sin(angle - np.pi / 2),
                1.7 + 0.2 * np.sin(3 * angle + phase[1]),
            ]
        )
        target = np.array([0.15 * np.sin(angle + phase[2]), 0.15 * np.cos(2 * angle + phase[3]), 0.5])
        R, t = cameras.look_at(center, target)  # noqa: N806 - rotation, as in daemon/samples
        fine = room.render_view(R, t, np.diag([2, 2, 1.0]) @ scene.K, 2 * width, 2 * height, atlas)
        pixels = sum(fine[i::2, j::2] for i in range(2) for j in range(2)) / 4  # 2×2 supersampling
        path = out_dir / f"frame_{index:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
        scene.views.append(cameras.SceneView(path, R, t))
    return scene


def run_video(scene: cameras.Scene, workdir: Path, options: SfmOptions) -> dict[str, object]:
    """One `run_sfm` on video frames: the figures of the `--video` table."""
    cpu, wall = cpu_seconds(), time.monotonic()
    try:
        result = run_sfm(scene.paths, workdir, options)
    except JobError as error:
        return {"error": error.code, "wall": time.monotonic() - wall}
    row: dict[str, object] = {"wall": time.monotonic() - wall, "cpu": cpu_seconds() - cpu}
    row["match"] = result.timings["match"]
    with pycolmap.Database.open(workdir / "database.db") as db:
        row["pairs"] = db.num_matched_image_pairs()
    model = pycolmap.Reconstruction(result.model_dir)
    ends = (f"{0:05d}_{scene.views[0].path.name}", f"{len(scene.views) - 1:05d}_{scene.views[-1].path.name}")
    row["loop"] = all(model.find_image_with_name(name) is not None for name in ends)
    errors = cameras.model_rotation_errors(scene, result)
    row.update(
        registered=f"{result.registered}/{result.total}",
        rot_median=float(np.median(errors)),
        rot_max=float(errors.max()),
    )
    return row


def print_video_table(rows: list[tuple[int, str, dict[str, object]]]) -> None:
    head = (
        "| frames | matcher | pairs | match s | SfM s | SfM CPU s | registered | rot median ° | rot max ° "
        "| first+last in model |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for frames, matcher, row in rows:
        if "error" in row:
            print(f"| {frames} | {matcher} | failed: {row['error']} after {row['wall']:.1f} s |")
            continue
        cells = [
            frames,
            matcher,
            row["pairs"],
            f"{row['match']:.1f}",
            f"{row['wall']:.1f}",
            f"{row['cpu']:.1f}",
        ]
        cells += [row["registered"], f"{row['rot_median']:.4f}", f"{row['rot_max']:.4f}"]
        cells += ["yes" if row["loop"] else "no"]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def bench_video(args: argparse.Namespace, size: tuple[int, int]) -> None:
    base = SfmOptions(
        num_threads=args.threads,
        cameras="single",
        time_limit_s=3600,
        sequential_overlap=args.overlap,
        loop_candidates=args.loop_candidates,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sfm_video_") as tmp:
        for frames in (int(v) for v in args.frames.split(",")):
            started = time.monotonic()
            scene = render_orbit(Path(tmp) / f"frames_{frames}", frames, size)
            print(f"rendered {frames} frames at {size[0]}×{size[1]} in {time.monotonic() - started:.1f} s")
            for matcher in VIDEO_MATCHERS:
                options = replace(base, matcher=matcher)  # type: ignore[arg-type]
                row = run_video(scene, Path(tmp) / "work", options)
                print(f"  {frames} frames, {matcher}: {row}", flush=True)
                rows.append((frames, matcher, row))
    print()
    print(
        f"orbit at {size[0]}×{size[1]}, {args.threads} threads, one shared camera, overlap {args.overlap}, "
        f"{args.loop_candidates} loop candidates per frame; seconds are wall"
    )
    print_video_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=30)
    parser.add_argument("--size", help="rendered image size, WxH (1600x1200; --video: 320x240)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grid", action="store_true", help="full 3×3×2 grid instead of one factor at a time")
    parser.add_argument("--verbose", action="store_true", help="keep COLMAP's INFO log")
    parser.add_argument("--video", action="store_true", help="compare matchers on an orbit's video frames")
    parser.add_argument("--frames", default="48,96", help="--video: frame counts, comma-separated")
    parser.add_argument("--overlap", type=int, default=SfmOptions.sequential_overlap, help="--video")
    parser.add_argument("--loop-candidates", type=int, default=SfmOptions.loop_candidates, help="--video")
    parser.add_argument("--photos", type=Path, help="a folder of real photos (with --poses)")
    parser.add_argument("--poses", type=Path, help="their reference: NeRF transforms.json or a COLMAP model")
    parser.add_argument("--long-side", type=int, default=960, help="--photos: downscale to this long side")
    parser.add_argument(
        "--ours", action="append", help="--photos: another row of our stage with SfmOptions changes, e.g. "
        "max_num_features=2048,matcher=retrieval (repeatable)"
    )  # fmt: skip
    parser.add_argument("--scale", help="photo counts, e.g. 50,200,500: cost per photo as the count grows")
    parser.add_argument("--exhaustive-max", type=int, default=200, help="--scale: exhaustive up to this many")
    args = parser.parse_args()
    if not args.verbose:
        pycolmap.logging.minloglevel = 2
    size = args.size or ("320x240" if args.video or args.scale else "1600x1200")
    width, height = (int(v) for v in size.lower().split("x"))
    if args.video:
        bench_video(args, (width, height))
        return
    if args.scale:
        from bench_sfm_scale import bench_scale

        bench_scale(args, (width, height), render_orbit)
        return
    if args.photos or args.poses:
        if not (args.photos and args.poses):
            parser.error("--photos and --poses go together")
        from bench_sfm_real import bench_real

        with tempfile.TemporaryDirectory(prefix="bench_sfm_real_") as tmp:
            bench_real(args.photos, args.poses, args.long_side, args.threads, Path(tmp), args.ours)
        return
    with tempfile.TemporaryDirectory(prefix="bench_sfm_") as tmp:
        started = time.monotonic()
        # Large renders: bilinear texture lookup on 2048² textures, one ray per pixel.
        scene = room.render_textured_scene(
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
        base = SfmOptions(num_threads=args.threads, cameras="single", time_limit_s=3600)
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
