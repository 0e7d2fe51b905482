"""What of a splat job goes into its checkpoints, and how it comes back on another machine.

After `images` (or a video job's `frames`): the normalised photos or chosen frames (images.tar or
frames.tar). After `sfm`: the undistorted model and photos
(sfm.tar). During `train`: the trainer's whole state, the curves so far and the initial metrics
(train-state.pt), at every step boundary where a checkpoint is due or the job is being preempted.
After `train`: the trained model (model.pt). Each checkpoint also carries the stage records, so a
resumed attempt finds its work folder as the interrupted one left it and skips the finished stages.
Downloads are not kept: once `images` or `frames` has finished they are not needed again.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from ..base import Context
from ..stages import restore_checkpoint, save_checkpoint
from .workspace import Workspace

log = logging.getLogger(__name__)

TRAIN_STATE = "train-state.pt"
MODEL = "model.pt"


def state_path(ws: Workspace) -> Path:
    return ws.root / "train" / "state.pt"


def stage_folders(ws: Workspace, stage: str) -> tuple[Path, ...]:
    """Folders a finished stage adds to the checkpoint, as `<stage>.tar` (named in it relative to the
    work folder, where `restore` extracts them)."""
    folders = {"images": (ws.images,), "frames": (ws.images,), "sfm": (ws.sfm.undistorted,)}
    return folders.get(stage, ())


def restore(ctx: Context, ws: Workspace) -> bool:
    """Bring back the newest checkpoint of the job into `ws`; False if there is none."""
    others = restore_checkpoint(ctx, ws.records)
    if others is None:
        return False
    for name, path in others.items():
        if name == MODEL:
            ws.model.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, ws.model)
        elif name == TRAIN_STATE:
            state_path(ws).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, state_path(ws))
    return True


def save_stage(ctx: Context, ws: Workspace, stage: str) -> None:
    """Checkpoint the outputs of `stage`, which just finished."""
    if stage == "train":  # the trained model supersedes the state of training in progress
        save_checkpoint(ctx, ws.records, stage, files={MODEL: ws.model}, drop=(TRAIN_STATE,))
    else:
        save_checkpoint(ctx, ws.records, stage, folders=stage_folders(ws, stage))


def save_training(ctx: Context, ws: Workspace, progress: dict[str, Any]) -> None:
    """Checkpoint training in progress: `progress` holds the trainer state, curves and metrics."""
    path = state_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(progress, path)
    if ctx.checkpoints is not None:
        ctx.checkpoints.add(TRAIN_STATE, path)
        ctx.checkpoints.commit(ws.records.all())
        log.info("training checkpoint at step %d", progress["trainer"]["step"])


def load_training(ws: Workspace) -> dict[str, Any] | None:
    """The training state a restored checkpoint brought back, if any.

    Loaded with `weights_only=True`: tensors and plain data only, never a pickled object. Checkpoints
    live in a bucket that every worker may write, so a checksum proves integrity, not origin: a state
    file holding anything else (a planted callable, or a state from before this rule) is refused, not
    run, and training starts again from its first step over the restored earlier stages."""
    path = state_path(ws)
    if not path.is_file():
        return None
    try:
        return dict(torch.load(path, weights_only=True))
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.error(
            "training checkpoint refused: it holds objects other than tensors and plain data (%s); "
            "training starts again from step 0",
            first_line[:300],
        )
        path.unlink()
        return None
