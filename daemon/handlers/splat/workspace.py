"""The splat job's work folder: where each stage keeps its files, and which stages have finished.

A stage that finishes records what it produced (handlers/stages.py: `stages/<name>.json`); a later run
over the same folder (`run-local --workdir`, or an attempt restored from a checkpoint) skips every
stage that has a record and reads its results from the record instead.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..stages import StageRecords

log = logging.getLogger(__name__)

STAGE_ORDER = ("download", "frames", "images", "sfm", "train", "evaluate", "export")
"""Every stage of both kinds in run order: a photo job has `images`, a video job `frames` instead."""


@dataclass(frozen=True)
class SfmLayout:
    """The files structure from motion owns under its folder: images/ (links to the inputs),
    database.db (features and matches), pairs.txt (the pairs "sequential_loop" matched), sparse/
    (every model; sparse/best the one kept), undistorted/ (COLMAP's undistorter output: the PINHOLE
    model in sparse/ and its photos in images/, which training reads and the checkpoint keeps)."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def database(self) -> Path:
        return self.root / "database.db"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs.txt"

    @property
    def sparse(self) -> Path:
        return self.root / "sparse"

    @property
    def best(self) -> Path:
        """The model that registered the most images."""
        return self.sparse / "best"

    @property
    def undistorted(self) -> Path:
        return self.root / "undistorted"

    @property
    def undistorted_images(self) -> Path:
        """Undistorted photos, named as in the model."""
        return self.undistorted / "images"

    @property
    def undistorted_model(self) -> Path:
        """The undistorted sparse model (cameras/images/points3D .bin), every camera PINHOLE."""
        return self.undistorted / "sparse"

    def reset(self) -> None:
        """Remove what an earlier run left and make the folders the first sub-step writes into."""
        for path in (self.images, self.sparse, self.undistorted):
            shutil.rmtree(path, ignore_errors=True)
        self.database.unlink(missing_ok=True)
        self.pairs.unlink(missing_ok=True)
        self.images.mkdir(parents=True)
        self.sparse.mkdir()

    def reset_features(self) -> None:
        """Remove the features, matches and models, keeping the images: for another pass (sfm.py)."""
        shutil.rmtree(self.sparse, ignore_errors=True)
        self.database.unlink(missing_ok=True)
        self.pairs.unlink(missing_ok=True)
        self.sparse.mkdir()


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def downloads(self) -> Path:
        """Inputs as downloaded (JobContext.fetch_inputs writes here)."""
        return self.root / "inputs"

    @property
    def images(self) -> Path:
        """Normalised photos (or a video's chosen frames): upright, sRGB, downscaled JPEGs numbered
        in input (time) order."""
        return self.root / "images"

    @property
    def sfm(self) -> SfmLayout:
        """Structure from motion's folder (sfm.py); training reads its undistorted model and photos."""
        return SfmLayout(self.root / "sfm")

    @property
    def model(self) -> Path:
        """The trained Gaussians and the training history (torch.save)."""
        return self.root / "train" / "model.pt"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def records(self) -> StageRecords:
        """Which stages finished in this folder (handlers/stages.py)."""
        return StageRecords(self.root, STAGE_ORDER)

    def finished(self, stage: str) -> dict[str, Any] | None:
        return self.records.finished(stage)

    def reused(self, stage: str) -> dict[str, Any] | None:
        return self.records.reused(stage)

    def record(self, stage: str, summary: dict[str, Any]) -> None:
        self.records.record(stage, summary)

    def forget_from(self, stage: str) -> None:
        self.records.forget_from(stage)
