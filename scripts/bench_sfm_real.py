"""`scripts/bench_sfm.py --photos DIR --poses FILE`: structure from motion on real photos with published
poses, pycolmap's defaults and our `sfm` stage side by side in one run.

The photos are first downscaled (`--long-side`, default 960: a phone's 1080×1920 becomes 540×960) into
a temporary folder, as a customer's upload would reach SfM after the images stage. Then:

- **pycolmap defaults**: `extract_features` (one shared camera, `CameraMode.SINGLE`, as the issue's
  reference run), `match_exhaustive`, `incremental_mapping`, every option at pycolmap's default;
- **our stage**: `run_sfm` with the daemon's `SfmOptions` defaults (cameras grouped by device and size,
  SIFT at most 720 px and 4,096 features, numbered photos matched as a walk, principal points refined
  last), undistortion shown apart; `--ours KEY=VALUE,...` adds rows with other `SfmOptions`.

Per run: wall seconds of extract, match and map (and undistort for ours) on `--threads` threads, the
total, registered/total, and the **pairwise rotation error** against the reference: for every pair of
registered photos, the angle between the estimated and the reference relative rotation (no alignment
needed; median and p90 over pairs). The reference is a NeRF `transforms.json` (camera-to-world, OpenGL
axes), a COLMAP model folder (cameras/images/points3D .bin or .txt) or a folder of Strecha `.camera`
files. Timings are one run each on a
shared machine: compare ratios, and repeat before trusting a close call.

Public sets that fit, read where they lie and never committed here (neither licence allows it):

- instant-ngp's `data/nerf/fox` (50 phone photos of 1080×1920 without EXIF, with `transforms.json`;
  github.com/NVlabs/instant-ngp, NVIDIA Source Code License-NC: research and evaluation only);
- Strecha et al.'s calibration benchmark (CVPR 2008: fountain-P11, Herz-Jesus-P25, castle-P30,
  entry-P10, 3072×2048, laser-scanned ground truth in `gt_dense_cameras/`), as kept by
  github.com/openMVG/SfM_quality_evaluation (`Benchmarking_Camera_Calibration_2008/`; research use).

    .venv/bin/python scripts/bench_sfm.py --photos ~/instant-ngp/data/nerf/fox/images \\
        --poses ~/instant-ngp/data/nerf/fox/transforms.json
    .venv/bin/python scripts/bench_sfm.py --photos $SET/images --poses $SET/gt_dense_cameras
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
from PIL import Image, ImageOps

from daemon.errors import JobError
from daemon.handlers.splat.sfm import run_sfm
from daemon.handlers.splat.sfm_matching import is_ordered_walk
from daemon.handlers.splat.sfm_options import SfmOptions
from daemon.handlers.splat.workspace import SfmLayout

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}
OPENGL_TO_COLMAP = np.diag([1.0, -1.0, -1.0])
"""NeRF's camera axes (x right, y up, looking down -z) to COLMAP's (x right, y down, looking down +z)."""


def reference_rotations(poses: Path) -> dict[str, np.ndarray]:
    """World-to-camera rotations (COLMAP axes) of the reference, by photo file name."""
    if poses.is_dir() and any(poses.glob("*.camera")):
        return strecha_rotations(poses)
    if poses.is_dir():
        model = pycolmap.Reconstruction(poses)
        return {
            image.name.rsplit("/", 1)[-1]: np.asarray(image.cam_from_world().rotation.matrix())
            for image in model.images.values()
            if image.has_pose
        }
    frames = json.loads(poses.read_text())["frames"]
    rotations = {}
    for frame in frames:
        c2w = np.asarray(frame["transform_matrix"], dtype=float)[:3, :3] @ OPENGL_TO_COLMAP
        rotations[Path(frame["file_path"]).name] = c2w.T
    return rotations


def strecha_rotations(folder: Path) -> dict[str, np.ndarray]:
    """Strecha et al.'s `<photo>.camera` files (CVPR 2008; openMVG's SfM_quality_evaluation): K (3
    rows), distortion (1), R (3: camera-to-world), the camera centre (1) and the image size (1)."""
    rotations = {}
    for path in sorted(folder.glob("*.camera")):
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        c2w = np.asarray(rows[4:7], dtype=float)
        rotations[path.name.removesuffix(".camera")] = c2w.T
    return rotations


def pairwise_rotation_errors(
    estimated: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> np.ndarray:
    """Degrees between estimated and reference relative rotations, over every pair both know."""
    names = sorted(set(estimated) & set(reference))
    errors = []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            rel_est = estimated[first] @ estimated[second].T
            rel_ref = reference[first] @ reference[second].T
            cos = (np.trace(rel_est.T @ rel_ref) - 1) / 2
            errors.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return np.asarray(errors)


def model_rotations(model: Any, name_of: Callable[[str], str]) -> dict[str, np.ndarray]:
    return {
        name_of(image.name): np.asarray(image.cam_from_world().rotation.matrix())
        for image in model.images.values()
        if image.has_pose
    }


def downscale(photos: Path, out: Path, long_side: int) -> list[Path]:
    """The photos, upright, their long side at most `long_side`, as JPEGs in `out` (same names)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in sorted(p for p in photos.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES):
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image).convert("RGB")
        upright.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
        target = out / f"{path.stem}.jpg"
        upright.save(target, "JPEG", quality=95)
        paths.append(target)
    return paths


def run_defaults(paths: list[Path], workdir: Path, threads: int) -> dict[str, Any]:
    """pycolmap's own pipeline, every option at its default but the thread count and one camera."""
    workdir.mkdir(parents=True, exist_ok=True)
    database, sparse = workdir / "database.db", workdir / "sparse"
    sparse.mkdir(exist_ok=True)
    images = paths[0].parent
    timings = {}
    started = time.monotonic()
    pycolmap.extract_features(
        database,
        images,
        image_names=[p.name for p in paths],
        camera_mode=pycolmap.CameraMode.SINGLE,
        extraction_options=pycolmap.FeatureExtractionOptions(num_threads=threads),
    )
    timings["extract"] = time.monotonic() - started
    started = time.monotonic()
    pycolmap.match_exhaustive(database, matching_options=pycolmap.FeatureMatchingOptions(num_threads=threads))
    timings["match"] = time.monotonic() - started
    started = time.monotonic()
    models = pycolmap.incremental_mapping(
        database, images, sparse, options=pycolmap.IncrementalPipelineOptions(num_threads=threads)
    )
    timings["map"] = time.monotonic() - started
    best = max(models.values(), key=lambda m: m.num_reg_images()) if models else None
    return {
        "timings": timings,
        "registered": best.num_reg_images() if best else 0,
        "cameras": len(best.cameras) if best else 0,
        "rotations": model_rotations(best, lambda name: name) if best else {},
    }


def run_ours(paths: list[Path], workdir: Path, threads: int, **changes: Any) -> dict[str, Any]:
    # As the splat job sets it: photos numbered as shot are a walk (sfm_matching.is_ordered_walk)
    changes.setdefault("ordered", is_ordered_walk([p.name for p in paths]))
    options = SfmOptions(num_threads=threads, time_limit_s=3600, **changes)
    try:
        result = run_sfm(paths, workdir, options)
    except JobError as error:
        return {"error": error.code, "timings": {}, "registered": 0, "rotations": {}}
    # The kept model before undistortion (principal points refined, if they were) has the photos' own
    # names (`<index>_<name>`)
    best = pycolmap.Reconstruction(SfmLayout(workdir).best)
    return {
        "timings": dict(result.timings),
        "registered": result.registered,
        "cameras": result.cameras,
        "matcher": result.matcher,
        "principal_point": result.principal_point,
        "camera_check": result.camera_check,
        "sift": result.sift,
        "rotations": model_rotations(best, lambda name: name.split("_", 1)[1]),
    }


def parse_variant(text: str) -> dict[str, Any]:
    """ "max_num_features=2048,matcher=retrieval" → SfmOptions changes (ints where they parse;
    "None" is None: first_octave=None is the auto octave)."""
    changes: dict[str, Any] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        value = value.strip()
        if value == "None":
            changes[key.strip()] = None
            continue
        try:
            changes[key.strip()] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            changes[key.strip()] = value
    return changes


def bench_real(
    photos: Path, poses: Path, long_side: int, threads: int, tmp: Path, variants: list[str] | None = None
) -> None:
    paths = downscale(photos, tmp / "photos", long_side)
    with Image.open(paths[0]) as first:
        size = "×".join(str(v) for v in first.size)
    reference = reference_rotations(poses)
    print(f"{len(paths)} photos at {size} (long side {long_side}), {len(reference)} reference poses, "
          f"{threads} threads", flush=True)  # fmt: skip
    rows = []
    runs: list[tuple[str, Callable[..., dict[str, Any]], dict[str, Any]]] = [
        ("pycolmap defaults (one camera, exhaustive)", run_defaults, {}),
        ("our sfm stage", run_ours, {}),
    ]
    runs += [(f"ours, {variant}", run_ours, parse_variant(variant)) for variant in variants or []]
    for index, (label, run, changes) in enumerate(runs):
        started = time.monotonic()
        row = run(paths, tmp / f"run{index}", threads, **changes)
        row["wall"] = time.monotonic() - started
        errors = pairwise_rotation_errors(row["rotations"], reference)
        row["rot"] = (float(np.median(errors)), float(np.percentile(errors, 90))) if errors.size else None
        print(f"  {label}: {_brief(row)}", flush=True)
        rows.append((label, row))
    print()
    print_real_table(rows, len(paths))


def _brief(row: dict[str, Any]) -> str:
    timings = " ".join(f"{k}={v:.1f}s" for k, v in row["timings"].items())
    extra = (
        f"matcher={row['matcher']} pp={row['principal_point']} check={row['camera_check']} "
        f"sift={row['sift']} "
        if row.get("matcher")
        else ""
    )
    return (
        f"{timings} registered={row['registered']} cameras={row.get('cameras')} {extra}{row.get('error', '')}"
    )


def print_real_table(rows: list[tuple[str, dict[str, Any]]], total: int) -> None:
    columns = "extract s | match s | map s | total s | undistort s | registered | cameras | rot err med/p90 °"
    print(f"| run | {columns} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, row in rows:
        t = row["timings"]
        core = sum(t.get(step, 0.0) for step in ("extract", "match", "map"))
        undistort = f"{t['undistort']:.1f}" if "undistort" in t else "–"
        rot = f"{row['rot'][0]:.3f} / {row['rot'][1]:.3f}" if row["rot"] else "–"
        cells = [label, *(f"{t.get(step, 0.0):.1f}" for step in ("extract", "match", "map")), f"{core:.1f}",
                 undistort, f"{row['registered']}/{total}", row.get("cameras", "–"), rot]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    base = sum(rows[0][1]["timings"].get(s, 0.0) for s in ("extract", "match", "map"))
    print()
    for label, row in rows[1:]:
        if row["timings"] and base:
            ours = sum(row["timings"].get(s, 0.0) for s in ("extract", "match", "map"))
            print(f"{label} / pycolmap defaults (extract+match+map): {ours / base:.2f}×")
