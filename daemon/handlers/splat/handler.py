"""Kinds `splat` and `splat_video`: their declarations for the registry. Light on purpose (no torch):
the worker's parent imports every handler declaration to validate specs and set time limits; the work
lives in `job`."""

from __future__ import annotations

from dataclasses import replace

from ..base import Context, Handler, Stage
from .params import SplatParams
from .params_video import SplatVideoParams

STAGES = (
    Stage("download", 3),
    Stage("images", 2),
    Stage("sfm", 20),
    Stage("train", 68),
    Stage("evaluate", 2),
    Stage("export", 5),
)
"""Progress weights: the time split of a medium job on one GPU (SfM on CPU threads meanwhile)."""

VIDEO_STAGES = (
    Stage("download", 3),
    Stage("frames", 4),
    Stage("sfm", 18),
    Stage("train", 68),
    Stage("evaluate", 2),
    Stage("export", 5),
)
"""A video job chooses its frames (decoding the whole video once) where a photo job normalises photos."""


def run(ctx: Context) -> None:
    from . import job  # torch, gsplat, pycolmap: only ever imported in the work-horse

    job.run(ctx)


HANDLER = Handler(
    kind="splat",
    params_model=SplatParams,
    # A "best" (30k-step) job on many photos takes about an hour on one GPU; 6 h leaves room for
    # slow SfM and CPU laptops while still catching a job that hangs.
    timeout_s=6 * 3600,
    stages=STAGES,
    run=run,
    description="Photos → SfM (pycolmap) → Gaussian splat training (gsplat) → PLY, previews, manifest.",
)


VIDEO_HANDLER = replace(
    HANDLER,
    kind="splat_video",
    params_model=SplatVideoParams,
    stages=VIDEO_STAGES,
    description="One video → sharp frames → SfM (one camera, sequential matching) → splat → PLY, bundle.",
    max_inputs=1,
    input_noun="video",
    too_many_inputs_hint="send photos as a splat job",
)
"""The same job and time limit; `job.run` tells the kinds apart by their params."""
