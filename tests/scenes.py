"""Scenes with known cameras for the SfM tests: the textured room of `daemon/samples` (shared with
`make demo` and the benchmarks, re-exported here), pycolmap's own synthetic dataset, and inputs SfM
must refuse (unrelated or featureless images).

Poses follow COLMAP: world-to-camera `x_cam = R @ x_world + t`, camera x right, y down, z forward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from daemon.samples.cameras import Scene, SceneView, model_rotation_errors
from daemon.samples.room import render_textured_scene
from daemon.samples.textures import procedural_texture

__all__ = [  # the first three are daemon/samples', named here so SfM tests find every scene in one place
    "Scene",
    "model_rotation_errors",
    "render_textured_scene",
    "synthesize_colmap_scene",
    "write_flat_images",
    "write_noise_images",
]


def write_noise_images(out_dir: Path, count: int, size: tuple[int, int], *, seed: int) -> list[Path]:
    """Unrelated images (independent colour noise blobs): they have features but match nothing."""
    rng = np.random.default_rng(seed + 1000)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        texture = procedural_texture(rng, max(size))[: size[1], : size[0]]
        path = out_dir / f"noise_{index:03d}.jpg"
        Image.fromarray(texture.astype(np.uint8)).save(path, quality=92)
        paths.append(path)
    return paths


def write_flat_images(out_dir: Path, count: int, size: tuple[int, int], grey: int = 128) -> list[Path]:
    """Featureless images: one flat grey, no SIFT keypoint can be found."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = out_dir / f"flat_{index:03d}.jpg"
        Image.new("RGB", size, (grey, grey, grey)).save(path)
        paths.append(path)
    return paths


# -- pycolmap's own synthetic dataset -------------------------------------------------------------


def synthesize_colmap_scene(
    out_dir: Path, *, count: int = 10, size: tuple[int, int] = (640, 480), seed: int = 0, points: int = 100
) -> Scene:
    """Images from `pycolmap.synthesize_images` (a noise patch around a bright peak per 3D point,
    the same in every view) with the poses `pycolmap.synthesize_dataset` drew around the points. One
    pinhole camera. Patches are 31 px wide whatever the image size, so small images need few points:
    measured, 640×480 with 100 points gives 36–85 inliers per pair and registers all 10 views, while
    320×240 (any patch size) or 512×384 with 60 points leaves no model or a 2-view one."""
    import pycolmap

    width, height = size
    focal = 1.2 * max(size)
    pycolmap.set_random_seed(seed)
    options = pycolmap.SyntheticDatasetOptions(
        num_rigs=1,
        num_cameras_per_rig=1,
        num_frames_per_rig=count,
        num_points3D=points,
        num_points2D_without_point3D=0,
        camera_width=width,
        camera_height=height,
        camera_model_id=pycolmap.CameraModelId.PINHOLE,
        camera_params=[focal, focal, width / 2, height / 2],
        sensor_from_rig_rotation_stddev=0.0,
    )
    reconstruction = pycolmap.synthesize_dataset(options)
    out_dir.mkdir(parents=True, exist_ok=True)
    pycolmap.synthesize_images(pycolmap.SyntheticImageOptions(), reconstruction, out_dir)
    scene = Scene([], width, height, focal, focal, width / 2, height / 2)
    for image in sorted(reconstruction.images.values(), key=lambda im: im.name):
        pose = image.cam_from_world()
        scene.views.append(SceneView(out_dir / image.name, pose.rotation.matrix(), pose.translation))
    return scene
