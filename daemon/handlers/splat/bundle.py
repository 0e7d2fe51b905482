"""The cameras a splat was trained from, and the one-file bundle the replaced video worker returned.

`cameras.json` lists every registered view of the undistorted (PINHOLE) model: its source (the
customer's photo, or the video frame and its time), intrinsics and pose. `bundle.zip` holds the PLY,
the cameras as JSON and as COLMAP text (cameras.txt, images.txt, points3D.txt: what COLMAP, nerfstudio
and most splat trainers import; pycolmap 4 adds rigs.txt and frames.txt, which older readers ignore),
the preview and the manifest.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CONVENTION = (
    "COLMAP: world-to-camera x_cam = R @ x_world + t; camera x right, y down, z forward; "
    "pixels of the undistorted image (PINHOLE)"
)

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
"""Zip entry time (the format's earliest): file times would make every run's bundle differ."""

ZIP_ENTRIES = ("splat.ply", "cameras.json", "preview.png", "manifest.json")
"""Output files copied into the bundle as they are (COLMAP text is added beside them under colmap/)."""


def write_cameras_json(out: Path, views: Sequence[tuple[Any, bool]], sources: Mapping[str, str]) -> int:
    """Write `out` from the training views (`Camera`, held out?); `sources` maps an image name to what
    it came from. Returns the number of views written."""
    entries = []
    for camera, held_out in sorted(views, key=lambda view: view[0].name):
        viewmat = camera.viewmat.detach().cpu().double()
        K = camera.K.detach().cpu().double()  # noqa: N806 - the usual name of the intrinsics
        R, t = viewmat[:3, :3], viewmat[:3, 3]  # noqa: N806
        entries.append(
            {
                "image": camera.name,
                "source": sources.get(camera.name),
                "held_out": held_out,
                "width": camera.width,
                "height": camera.height,
                "fx": round(float(K[0, 0]), 6),
                "fy": round(float(K[1, 1]), 6),
                "cx": round(float(K[0, 2]), 6),
                "cy": round(float(K[1, 2]), 6),
                "R": [[round(float(v), 9) for v in row] for row in R],
                "t": [round(float(v), 9) for v in t],
                "center": [round(float(v), 9) for v in -R.T @ t],
            }
        )
    out.write_text(json.dumps({"convention": CONVENTION, "views": entries}, indent=1))
    return len(entries)


def write_bundle(out: Path, outputs: Path, model_dir: Path) -> None:
    """Zip the bundle from the files in `outputs` and the COLMAP model in `model_dir`."""
    import pycolmap

    with tempfile.TemporaryDirectory(dir=outputs.parent) as tmp:
        text_dir = Path(tmp)
        pycolmap.Reconstruction(str(model_dir)).write_text(str(text_dir))
        partial = out.with_name(f".{out.name}.part")
        # PLY and PNG barely compress; deflate still shrinks JSON and COLMAP text several times.
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as bundle:
            for name in ZIP_ENTRIES:
                _add(bundle, outputs / name, name)
            for path in sorted(text_dir.glob("*.txt")):
                _add(bundle, path, f"colmap/{path.name}")
        partial.replace(out)


def _add(bundle: zipfile.ZipFile, path: Path, name: str) -> None:
    """Stream `path` in under a fixed timestamp, so the same outputs give the same zip bytes."""
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    with path.open("rb") as src, bundle.open(info, "w", force_zip64=True) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
