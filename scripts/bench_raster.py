#!/usr/bin/env python3
"""Rasterizer benchmark: our CPU tile compositor against the dense reference, forward + backward.

What is measured: wall time of one `rasterize_cpu` call for one view plus `backward()` of a loss over
its image and alpha (so projection, SH-free colours, binning and compositing are all in it), the median
of `--repeats` runs after one untimed warm-up. "dense" composites every pixel against every Gaussian
(`raster_dense.py`, the plain alternative); "tile" is `raster_cpu.py` with its default 8 px tiles,
"tile16" the same with gsplat's 16 px tiles (same image). All render the same scene, so
the table also shows the largest image difference and the largest gradient difference (over means,
quats, scales, opacities, colours; absolute, and relative to that gradient's largest entry).

The scene: Gaussians 2-6 units in front of the camera over the view frustum (some outside it), sizes
log-uniform at about 0.2-5 px standard deviation on screen, random orientations, opacities
sigmoid(N(0, 1.5²)), random colours; mean alpha is 0.9-0.98. The biggest size runs the tile backend only
(dense would take minutes). Torch uses its default thread count (printed). Timings are never asserted.

Other load on the machine hurts the tile column far more than the dense one: with libgomp's default
spin-waiting, every parallel torch op waits for a descheduled thread, and the tile compositor issues many
mid-sized ops (one 40x30 render went from 0.05 s to 2.5 s next to another busy process).
`OMP_WAIT_POLICY=PASSIVE` in the environment (read when torch loads) removes that; the header shows it
and the load average.

    .venv/bin/python scripts/bench_raster.py              # ~1.5 minutes on 2 cores
    .venv/bin/python scripts/bench_raster.py --repeats 1  # quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.handlers.splat.raster import Compositor, rasterize_cpu  # noqa: E402
from daemon.handlers.splat.raster_cpu import composite_tiles  # noqa: E402
from daemon.handlers.splat.raster_dense import composite_dense  # noqa: E402
from daemon.samples.gaussians import make_scene as gaussian_scene  # noqa: E402

PARAMS = ("means", "quats", "scales", "opacities", "colors")
CASES = ((64, 48, 2_000, True), (128, 128, 10_000, True), (256, 192, 50_000, False))
"""(width, height, Gaussians, also run dense)."""


def make_scene(n: int, width: int, height: int, seed: int = 0) -> dict[str, Any]:
    """One camera's worth of the tests' random scene (same generator, so bench and tests agree)."""
    return gaussian_scene(n, width, height, cameras=1, seed=seed)


def run_once(
    scene: dict[str, Any], width: int, height: int, compositor: Compositor, tile_size: int
) -> tuple[float, dict[str, Any]]:
    leaves = {k: scene[k].clone().requires_grad_(True) for k in PARAMS}
    started = time.perf_counter()
    images, alphas, _ = rasterize_cpu(
        *(leaves[k] for k in PARAMS),
        scene["viewmats"],
        scene["Ks"],
        width,
        height,
        tile_size=tile_size,
        compositor=compositor,
    )
    (images.sum() + 0.5 * alphas.sum()).backward()
    elapsed = time.perf_counter() - started
    return elapsed, {"images": images.detach(), "grads": {k: v.grad for k, v in leaves.items()}}


def measure(
    scene: dict[str, Any], width: int, height: int, compositor: Compositor, repeats: int, tile_size: int = 8
) -> tuple[float, dict[str, Any]]:
    runs = [run_once(scene, width, height, compositor, tile_size) for _ in range(repeats)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def grad_diff(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Largest absolute gradient difference, and largest relative to each gradient's own scale."""
    diffs = [float((got[k] - want[k]).abs().max()) for k in PARAMS]
    scales = [float(want[k].abs().max()) or 1.0 for k in PARAMS]
    return max(diffs), max(d / s for d, s in zip(diffs, scales, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median); default 3")
    parser.add_argument("--no-big", action="store_true", help="skip the tile-only 256x192 / 50k case")
    args = parser.parse_args(argv)
    print(
        f"bench: torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPU(s), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, median of {args.repeats}, "
        f"forward + backward of one view; load average {load()}",
        flush=True,
    )
    warm = make_scene(500, 32, 24)
    for compositor in (composite_tiles, composite_dense):
        run_once(warm, 32, 24, compositor, 8)  # first-call costs (allocator, op dispatch) stay out
    header = f"{'size':>9} {'Gaussians':>9} | {'dense s':>8} {'tile s':>7} {'speedup':>7} {'tile16 s':>8} | "
    header += f"{'max |Δimage|':>12} {'max |Δgrad|':>11} {'(rel)':>7}"
    rows = [header, "-" * len(header)]
    for width, height, n, with_dense in CASES:
        if not with_dense and args.no_big:
            continue
        scene = make_scene(n, width, height)
        tile_s, tile = measure(scene, width, height, composite_tiles, args.repeats)
        tile16_s, _ = measure(scene, width, height, composite_tiles, args.repeats, tile_size=16)
        row = f"{width}x{height}".rjust(9) + f" {n:>9} | "
        if with_dense:
            dense_s, dense = measure(scene, width, height, composite_dense, args.repeats)
            image_diff = float((tile["images"] - dense["images"]).abs().max())
            abs_diff, rel_diff = grad_diff(tile["grads"], dense["grads"])
            row += f"{dense_s:>8.3f} {tile_s:>7.3f} {dense_s / tile_s:>6.1f}x {tile16_s:>8.3f} | "
            row += f"{image_diff:>12.1e} {abs_diff:>11.1e} {rel_diff:>7.1e}"
        else:
            row += f"{'-':>8} {tile_s:>7.3f} {'-':>7} {tile16_s:>8.3f} | {'-':>12} {'-':>11} {'-':>7}"
        rows.append(row)
        print(f"bench: {width}x{height} / {n} done", flush=True)
    print(f"bench: load average {load()} (other processes' CPU use inflates both columns)")
    print()
    print("\n".join(rows))
    return 0


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
