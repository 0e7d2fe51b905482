"""`scripts/bench_sfm.py --scale 50,200,500`: how SfM's cost grows with the number of photos.

For each count, an orbit of the textured room is rendered (daemon/samples; `--size`, default 320×240)
and shuffled, so no matcher can lean on the input order, and our stage runs with its default matcher
("auto": exhaustive up to 50 photos, retrieval above) and, up to `--exhaustive-max` photos, with
exhaustive matching for comparison (the quadratic plain alternative). Per run: pairs matched, wall
seconds per photo of extract, match and map, the whole stage's wall seconds, registered/total and the
median rotation error after a similarity alignment. Generated scenes are fine for scale; accuracy on
real photos is `--photos`' business.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap

from daemon.errors import JobError
from daemon.handlers.splat.sfm import run_sfm
from daemon.handlers.splat.sfm_matching import choose_matcher
from daemon.handlers.splat.sfm_options import SfmOptions
from daemon.samples import cameras


def run_scaled(scene: cameras.Scene, workdir: Path, options: SfmOptions) -> dict[str, object]:
    started = time.monotonic()
    try:
        result = run_sfm(scene.paths, workdir, options)
    except JobError as error:
        return {"error": error.code, "wall": time.monotonic() - started}
    row: dict[str, object] = {"wall": time.monotonic() - started, **result.timings}
    with pycolmap.Database.open(workdir / "database.db") as db:
        row["pairs"] = db.num_matched_image_pairs()
    errors = cameras.model_rotation_errors(scene, result)
    row.update(registered=f"{result.registered}/{result.total}", rot_median=float(np.median(errors)))
    return row


def bench_scale(args: argparse.Namespace, size: tuple[int, int], render_orbit) -> None:  # noqa: ANN001
    base = SfmOptions(num_threads=args.threads, time_limit_s=4 * 3600)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sfm_scale_") as tmp:
        for count in (int(v) for v in args.scale.split(",")):
            started = time.monotonic()
            scene = render_orbit(Path(tmp) / f"views_{count}", count, size)
            order = np.random.default_rng(count).permutation(count)
            scene = replace(scene, views=[scene.views[i] for i in order])
            print(
                f"rendered {count} views at {size[0]}×{size[1]} in {time.monotonic() - started:.0f} s",
                flush=True,
            )
            runs = [("auto: " + choose_matcher(count, base), base)]
            if count <= args.exhaustive_max:
                runs.append(("exhaustive", replace(base, matcher="exhaustive")))
            for label, options in runs:
                row = run_scaled(scene, Path(tmp) / "work", options)
                print(f"  {count} photos, {label}: {row}", flush=True)
                rows.append((count, label, row))
    print()
    print(f"shuffled orbit at {size[0]}×{size[1]}, {args.threads} threads, wall seconds")
    columns = "pairs | extract s/photo | match s/photo | map s/photo | stage s | registered | rot median °"
    print(f"| photos | matcher | {columns} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for count, label, row in rows:
        if "error" in row:
            print(f"| {count} | {label} | failed: {row['error']} after {row['wall']:.0f} s |")
            continue
        per = [f"{float(row[step]) / count:.3f}" for step in ("extract", "match", "map")]  # type: ignore[arg-type]
        cells = [
            count,
            label,
            row["pairs"],
            *per,
            f"{row['wall']:.0f}",
            row["registered"],
            f"{row['rot_median']:.3f}",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
