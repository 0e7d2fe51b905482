"""Kind `mesh`: an uploaded 3D model (GLB, glTF, OBJ, PLY, STL) → an optimised, compressed GLB, a chain
of levels of detail with their measured error, a tiny preview, a thumbnail and an analysis (job.py)."""

from __future__ import annotations

from ..base import Context, Handler, Stage
from .params import MeshParams


def run(ctx: Context) -> None:
    from . import job  # trimesh and the tools only in the job's process

    job.run(ctx)


HANDLER = Handler(
    kind="mesh",
    params_model=MeshParams,
    timeout_s=60 * 60,
    # Weights: the share of a typical job's time (a 1M-triangle textured scan)
    stages=(
        Stage("download", 5),
        Stage("read", 10),
        Stage("analyze", 10),
        Stage("optimize", 20),
        Stage("lods", 40),
        Stage("thumbnail", 10),
        Stage("export", 5),
    ),  # fmt: skip
    run=run,
    description="Optimise an uploaded 3D model for the web: compressed GLB, levels of detail, thumbnail.",
    max_inputs=1,
    input_noun="model",
    too_many_inputs_hint="zip a .gltf or .obj with its files into one upload",
)
