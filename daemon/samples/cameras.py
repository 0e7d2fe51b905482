# ruff: noqa: N803, N806 - R, t, K, U, V: the notation of the multiple-view geometry literature
"""Known cameras: the pinhole scene a sample capture was made from, and how far recovered cameras are
from it.

Poses follow COLMAP: world-to-camera `x_cam = R @ x_world + t`, camera x right, y down, z forward;
the world's z is up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SceneView:
    path: Path
    R: np.ndarray
    """World-to-camera rotation (3×3)."""
    t: np.ndarray
    """World-to-camera translation (3,)."""

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t


@dataclass(frozen=True)
class Scene:
    views: list[SceneView]
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @property
    def paths(self) -> list[Path]:
        return [v.path for v in self.views]

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name of the intrinsic matrix
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])


def look_at(center: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) of a camera at `center` looking at `target` with the world's z up."""
    forward = (target - center) / np.linalg.norm(target - center)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    return R, -R @ center


def ring_poses(
    count: int, *, seed: int, arc_deg: float = 360.0, radius: float = 4.0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cameras on an arc around the room's box at about eye height, in order, with a little seeded
    jitter (an exactly planar, equally spaced ring is a special case SfM never meets)."""
    rng = np.random.default_rng(seed)
    full = arc_deg >= 360.0
    angles = np.deg2rad(np.linspace(0.0, arc_deg, count, endpoint=not full)) - np.pi / 2
    poses = []
    for angle in angles:
        r = radius + rng.uniform(-0.3, 0.3)
        center = np.array([r * np.cos(angle), r * np.sin(angle), 1.7 + rng.uniform(-0.25, 0.25)])
        target = np.array([0.0, 0.0, 0.5]) + rng.uniform(-0.2, 0.2, 3)
        poses.append(look_at(center, target))
    return poses


# -- comparing recovered cameras with the known ones ----------------------------------------------


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising ‖dst − (s R src + t)‖² over point pairs (N×3 each)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    U, D, Vt = np.linalg.svd(xd.T @ xs / len(src))
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    R = U @ S @ Vt
    scale = float(np.trace(np.diag(D) @ S) / xs.var(0).sum())
    return scale, R, mu_d - scale * R @ mu_s


def rotation_errors_deg(
    known: Sequence[tuple[np.ndarray, np.ndarray]], found: Sequence[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Per-camera rotation error (degrees) after aligning `found` to `known` world frames with a
    similarity fitted on the camera centres (Umeyama). Each item is a world-to-camera (R, t)."""
    centers_known = np.array([-R.T @ t for R, t in known])
    centers_found = np.array([-R.T @ t for R, t in found])
    _, R_align, _ = umeyama(centers_found, centers_known)
    errors = []
    for (R_k, _), (R_f, _) in zip(known, found, strict=True):
        # found maps world_f → cam; world_f = R_align^T world_k (up to scale/shift) → cam_from_world_k.
        R_fk = R_f @ R_align.T
        cos = (np.trace(R_fk @ R_k.T) - 1) / 2
        errors.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return np.array(errors)


def model_rotation_errors(scene: Scene, result: Any) -> np.ndarray:
    """Rotation error (degrees) of every registered view of an SfM result (anything with a
    `model_dir` holding a COLMAP model) against the scene's known cameras, after alignment (`run_sfm`
    names images `<index:05d>_<input name>`). pycolmap is imported here only: it reads the model."""
    import pycolmap

    model = pycolmap.Reconstruction(result.model_dir)
    known, found = [], []
    for index, view in enumerate(scene.views):
        image = model.find_image_with_name(f"{index:05d}_{view.path.name}")
        if image is not None and image.has_pose:
            pose = image.cam_from_world()
            known.append((view.R, view.t))
            found.append((pose.rotation.matrix(), pose.translation))
    return rotation_errors_deg(known, found)
