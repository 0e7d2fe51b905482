"""Kind `pointcloud`: a laser scan or photogrammetry cloud (LAS/LAZ/COPC) → noise classified, ground
classified, `cloud.copc.laz`, a 3D Tiles tileset, a top-down preview and an analysis (job.py)."""

from __future__ import annotations

from ..base import Context, Handler, Stage
from .params import PointcloudParams


def run(ctx: Context) -> None:
    from . import job  # laspy, copclib, CSF and py3dtiles only in the job's process

    job.run(ctx)


HANDLER = Handler(
    kind="pointcloud",
    params_model=PointcloudParams,
    timeout_s=12 * 60 * 60,
    # Weights: the share of a typical job's time (a 50M-point survey)
    stages=(
        Stage("download", 5),
        Stage("read", 10),
        Stage("analyze", 3),
        Stage("clean", 25),
        Stage("classify", 20),
        Stage("tile", 35),
        Stage("export", 2),
    ),  # fmt: skip
    run=run,
    description="Clean, classify and tile a point cloud: COPC, 3D Tiles, a preview and an analysis.",
    max_inputs=1,
    input_noun="point cloud",
    too_many_inputs_hint="merge the scans into one file, or send one job per scan",
)
