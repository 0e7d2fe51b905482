"""The camera check after mapping (sfm_camera_check.py): photos of one size without EXIF share a
camera until the model shows they come from two devices; then each gets its own."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

pycolmap = pytest.importorskip("pycolmap")

from daemon.handlers.splat.sfm import run_sfm  # noqa: E402
from daemon.handlers.splat.sfm_options import SfmOptions  # noqa: E402
from daemon.handlers.splat.workspace import SfmLayout  # noqa: E402
from tests import scenes  # noqa: E402

FAST = SfmOptions(max_image_size=640, max_num_features=2048, num_threads=2, time_limit_s=300)
FOV_DEG = {"a": 60.0, "b": 45.0}
"""Two devices writing the same 320×240: focal lengths 277 and 386 px."""


pytestmark = pytest.mark.usefixtures("quiet_colmap")  # tests/splat/conftest.py


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory) -> tuple[scenes.Scene, dict[str, float]]:
    """20 photos of the room from each device, in one folder (a_…, then b_…), no EXIF; and each
    photo's true focal length by its file name."""
    root = tmp_path_factory.mktemp("two_devices")
    photos = root / "photos"
    photos.mkdir()
    views, focal_of = [], {}
    for seed, (device, fov) in enumerate(FOV_DEG.items()):
        scene = scenes.render_textured_scene(root / device, count=20, seed=seed, fov_deg=fov)
        for view in scene.views:
            path = photos / f"{device}_{view.path.name}"
            shutil.copy(view.path, path)
            views.append(replace(view, path=path))
            focal_of[path.name] = scene.fx
    first = scene  # the intrinsics below are not read: each photo's focal is in focal_of
    return scenes.Scene(views, first.width, first.height, first.fx, first.fy, first.cx, first.cy), focal_of


def test_photos_of_one_size_from_two_devices_get_a_camera_each(two_devices, tmp_path):
    scene, focal_of = two_devices
    # Given 40 photos of one size without EXIF, half from a 60° and half from a 45° camera
    # When SfM runs with its default grouping (one camera per size), and forced to one camera
    result = run_sfm(scene.paths, tmp_path / "auto", FAST)
    forced = run_sfm(scene.paths, tmp_path / "single", replace(FAST, cameras="single"))
    # Then every photo is registered both ways, but the check found the one camera was two devices
    assert result.registered == forced.registered == 40
    assert (result.camera_check, result.cameras) == ("split", 40)
    assert (forced.camera_check, forced.cameras) == ("skipped", 1)
    # And the photos' own cameras have their device's focal length: each within 8% (one photo pins
    # its focal length less well than 20 do), their median within 3% (multithreaded mapping is not
    # deterministic: a clean-clone run on a loaded machine once gave 2.2%)
    model = pycolmap.Reconstruction(SfmLayout(tmp_path / "auto").best)
    found: dict[float, list[float]] = {}
    for image in model.images.values():
        true_focal = focal_of[image.name.split("_", 1)[1]]
        assert image.camera.focal_length == pytest.approx(true_focal, rel=0.08), image.name
        found.setdefault(true_focal, []).append(image.camera.focal_length)
    assert len(found) == 2
    for true_focal, focals in found.items():
        assert np.median(focals) == pytest.approx(true_focal, rel=0.03)
    # And the cameras are placed better than with the one camera between the two
    split_error = np.median(scenes.model_rotation_errors(scene, result))
    forced_error = np.median(scenes.model_rotation_errors(scene, forced))
    print(f"two devices: median rotation error {split_error:.3f}° split, {forced_error:.3f}° one camera")
    assert split_error < forced_error
    assert result.mean_reprojection_error < 0.6 * forced.mean_reprojection_error
