"""`tiles/`: a Cesium 3D Tiles tileset of the cloud, made by py3dtiles (the replaced worker's own tool)
from the finished points (a plain LAS written beside the COPC), as a child process under a time limit
(handlers/children.py).

A cloud with a known coordinate system is placed on the globe (py3dtiles reprojects to EPSG:4978,
Earth-centred, which CesiumJS expects); one without stays in its own coordinates, as py3dtiles leaves
it, and a viewer shows it unplaced.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ...errors import JobError
from ..children import run_limited

CLI = "daemon.handlers.pointcloud.py3dtiles_cli"
"""py3dtiles' command line, run so that it cannot deadlock on LAZ (see that module)."""

TIME_S = 6 * 3600
"""py3dtiles' limit: about 1 µs a point at 10⁹ points, with room."""


def write_tileset(source: Path, out: Path, epsg: int | None, jobs: int, numba_cache: Path) -> dict[str, Any]:
    """The tileset of the LAS file `source` in `out` (`out/tileset.json` and its tiles); a summary. py3dtiles
    compiles its kernels with numba on first use (10 s): `numba_cache` keeps them between jobs."""
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", CLI, "convert", str(source), "--out", str(out), "--jobs", str(jobs),
            "--overwrite"]  # fmt: skip
    if epsg is not None:
        argv += ["--srs_in", str(epsg), "--srs_out", "4978"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NUMBA_CACHE_DIR": str(numba_cache)}
    status, _, stderr = run_limited(argv, "py3dtiles convert", TIME_S, timeout_code="tiling_timeout", env=env)
    if status != 0 or not (out / "tileset.json").exists():
        detail = stderr.decode(errors="replace")[-800:]
        raise JobError(f"py3dtiles convert failed (status {status}): {detail}", code="tiling_failed")
    return _summary(out, placed=epsg is not None)


def _summary(out: Path, placed: bool) -> dict[str, Any]:
    tileset = json.loads((out / "tileset.json").read_text())
    tiles = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".pnts", ".glb", ".json")]
    return {"files": len(tiles), "bytes": sum(p.stat().st_size for p in tiles),
            "geometric_error": tileset.get("geometricError"), "placed_on_globe": placed,
            "asset_version": tileset.get("asset", {}).get("version")}  # fmt: skip
