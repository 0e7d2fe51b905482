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
import tarfile
from pathlib import Path
from typing import Any

import torch

from ..base import Context
from .workspace import STAGE_ORDER, Workspace

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
    if ctx.checkpoints is None:
        return False
    restored = ctx.checkpoints.restore(ws.root / ".restore")
    if restored is None:
        return False
    for name, path in restored.files.items():
        if name.endswith(".tar"):
            with tarfile.open(path) as tar:
                tar.extractall(ws.root, filter="data")
            path.unlink()
        elif name == MODEL:
            ws.model.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, ws.model)
        elif name == TRAIN_STATE:
            state_path(ws).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, state_path(ws))
    for stage, record in restored.records.items():
        ws.record(stage, record)
    done = [s for s in STAGE_ORDER if s in restored.records]
    log.info("restored stages %s from attempt %d", ", ".join(done) or "none", restored.attempt)
    return True


def _records(ws: Workspace) -> dict[str, Any]:
    return {stage: rec for stage in STAGE_ORDER if (rec := ws.finished(stage)) is not None}


def save_stage(ctx: Context, ws: Workspace, stage: str) -> None:
    """Checkpoint the outputs of `stage`, which just finished."""
    if ctx.checkpoints is None:
        return
    if folders := stage_folders(ws, stage):
        tar_path = ws.root / f".{stage}.tar"
        with tarfile.open(tar_path, "w") as tar:
            for folder in folders:
                tar.add(folder, arcname=folder.relative_to(ws.root).as_posix())
        ctx.checkpoints.add(f"{stage}.tar", tar_path)
        tar_path.unlink()
    elif stage == "train":
        ctx.checkpoints.add(MODEL, ws.model)
        ctx.checkpoints.entries.pop(TRAIN_STATE, None)
    ctx.checkpoints.commit(_records(ws))


def save_training(ctx: Context, ws: Workspace, progress: dict[str, Any]) -> None:
    """Checkpoint training in progress: `progress` holds the trainer state, curves and metrics."""
    path = state_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(progress, path)
    if ctx.checkpoints is not None:
        ctx.checkpoints.add(TRAIN_STATE, path)
        ctx.checkpoints.commit(_records(ws))
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
