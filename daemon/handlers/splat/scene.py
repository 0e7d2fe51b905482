"""From an undistorted (PINHOLE) COLMAP model to training views: cameras, photos, initial points.

Every `holdout_every`-th image (in name order, so the split is stable across runs and resumes) is held
out for evaluation and never trained on. Image names start with their input index (the SfM stage
names them so), so name order is input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...errors import JobError
from .train import Camera


@dataclass(frozen=True)
class Scene:
    train: list[Camera]
    test: list[Camera]
    points: torch.Tensor  # [N, 3]
    colors: torch.Tensor  # [N, 3] in [0, 1]


def _camera(image: object, images_dir: Path, device: torch.device) -> Camera:
    cam = image.camera  # type: ignore[attr-defined]
    if cam.model_name not in ("PINHOLE", "SIMPLE_PINHOLE"):
        raise JobError(f"camera model {cam.model_name} is not undistorted", code="sfm_failed")
    viewmat = torch.eye(4)
    viewmat[:3, :] = torch.from_numpy(np.asarray(image.cam_from_world().matrix(), dtype=np.float32))  # type: ignore[attr-defined]
    K = torch.from_numpy(np.asarray(cam.calibration_matrix(), dtype=np.float32))  # noqa: N806
    with Image.open(images_dir / image.name) as img:  # type: ignore[attr-defined]
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if pixels.shape[:2] != (cam.height, cam.width):
        raise JobError(f"{image.name}: image size differs from its camera", code="sfm_failed")  # type: ignore[attr-defined]
    return Camera(
        name=image.name,  # type: ignore[attr-defined]
        viewmat=viewmat.to(device),
        K=K.to(device),
        image=torch.from_numpy(pixels).to(device),
    )


def split_holdout(count: int, holdout_every: int) -> list[bool]:
    """Which of `count` views (in name order) are held out: every `holdout_every`-th, starting with the
    first, when there are at least two per held-out view; none otherwise (or when it is 0)."""
    if holdout_every < 2 or count < 2 * holdout_every:
        return [False] * count
    return [i % holdout_every == 0 for i in range(count)]


def load_scene(
    model_dir: Path, images_dir: Path, *, holdout_every: int = 8, device: torch.device | None = None
) -> Scene:
    import pycolmap

    device = device or torch.device("cpu")
    rec = pycolmap.Reconstruction(str(model_dir))
    images = sorted(rec.images.values(), key=lambda im: im.name)
    cameras = [_camera(im, images_dir, device) for im in images]
    held_out = split_holdout(len(cameras), holdout_every)
    train = [c for c, out in zip(cameras, held_out, strict=True) if not out]
    test = [c for c, out in zip(cameras, held_out, strict=True) if out]
    points3d = list(rec.points3D.values())
    if not points3d:
        raise JobError("the SfM model has no 3D points to start from", code="sfm_failed")
    xyz = torch.tensor(np.array([p.xyz for p in points3d]), dtype=torch.float32, device=device)
    rgb = torch.tensor(np.array([p.color for p in points3d]), dtype=torch.float32, device=device) / 255.0
    return Scene(train=train, test=test, points=xyz, colors=rgb)
