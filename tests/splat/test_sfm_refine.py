"""Mapping's last step, the principal points refined (sfm_refine.py): on a lens whose principal point
sits off centre it finds the point and straightens the cameras; its guard keeps the mapped model
when a camera has too few photos or the free principal point runs away."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pycolmap = pytest.importorskip("pycolmap")

from daemon.handlers.splat import sfm_refine  # noqa: E402
from daemon.handlers.splat.sfm import run_sfm  # noqa: E402
from daemon.handlers.splat.sfm_options import SfmOptions  # noqa: E402
from daemon.handlers.splat.sfm_refine import refine_principal_points  # noqa: E402
from daemon.handlers.splat.sfm_supervisor import Supervisor  # noqa: E402
from daemon.handlers.splat.workspace import SfmLayout  # noqa: E402
from tests import scenes  # noqa: E402

FAST = SfmOptions(max_image_size=640, max_num_features=2048, num_threads=2, time_limit_s=300)
OFFSET = (9.0, -7.0)
"""The lens's principal point, px right of and below the centre of a 320×240 photo (a phone's is
~1% of the size off; this is ~3%, so the tilt it gives the cameras, ~1.9° at this focal length,
stands far above the SfM's own error)."""


pytestmark = pytest.mark.usefixtures("quiet_colmap")  # tests/splat/conftest.py


@pytest.fixture(scope="module")
def off_centre(tmp_path_factory) -> tuple[scenes.Scene, Any, Any, Path]:
    """16 photos through an off-centre lens, and SfM on them with the refinement (in root/refined)
    and without (root/centred)."""
    root = tmp_path_factory.mktemp("off_centre")
    scene = scenes.render_textured_scene(root / "photos", count=16, seed=5, principal_offset=OFFSET)
    refined = run_sfm(scene.paths, root / "refined", FAST)
    centred = run_sfm(scene.paths, root / "centred", replace(FAST, principal_point_min_images=0))
    return scene, refined, centred, root


def test_an_off_centre_principal_point_is_found_and_the_cameras_straighten(off_centre):
    scene, refined, centred, root = off_centre
    # Given SfM on photos from a lens whose principal point is off centre, as real lenses' are
    # Then the default run freed the principal point last, and the run with the step off did not
    assert refined.principal_point == "refined" and centred.principal_point == "disabled"
    assert refined.registered == centred.registered == 16
    # And the mapped camera's principal point is the lens's within 2.5 px (16 small views pin it to
    # about ±2 px, measured; the centre is 11 px away), and the undistorted model training reads keeps it
    mapped = the_camera(pycolmap.Reconstruction(SfmLayout(root / "refined").best))
    assert mapped.principal_point_x == pytest.approx(scene.cx, abs=2.5)
    assert mapped.principal_point_y == pytest.approx(scene.cy, abs=2.5)
    undistorted = the_camera(pycolmap.Reconstruction(refined.model_dir))
    assert (undistorted.principal_point_x - undistorted.width / 2) == pytest.approx(OFFSET[0], abs=3.0)
    # And its cameras' rotations are several times closer to the truth than with the centre assumed
    err_refined = np.median(scenes.model_rotation_errors(scene, refined))
    err_centred = np.median(scenes.model_rotation_errors(scene, centred))
    print(f"off-centre lens: median rotation error {err_refined:.3f}° refined, {err_centred:.3f}° centred")
    assert err_refined < 0.5 * err_centred


def test_a_camera_with_too_few_photos_keeps_its_centre(off_centre):
    *_, root = off_centre
    # Given the mapped model of 16 photos on one camera
    model = pycolmap.Reconstruction(SfmLayout(root / "centred").best)
    sup = Supervisor(60, lambda fraction: None, lambda: False)
    # When the refinement needs 17 photos per camera, then it does not run and the model is the same
    kept, outcome = refine_principal_points(
        pycolmap, model, replace(FAST, principal_point_min_images=17), sup
    )
    assert kept is model and outcome.outcome == "few_images"
    assert "map" not in sup.timings


def test_a_principal_point_that_runs_away_is_dropped(off_centre, monkeypatch):
    *_, root = off_centre
    # Given the model mapped with the centre assumed (its principal point will move ~11 px when freed)
    model = pycolmap.Reconstruction(SfmLayout(root / "centred").best)
    before = the_camera(model).principal_point_x
    sup = Supervisor(60, lambda fraction: None, lambda: False)
    # When any move over 1% of the image counts as running away
    monkeypatch.setattr(sfm_refine, "MAX_SHIFT", 0.01)
    kept, outcome = refine_principal_points(pycolmap, model, FAST, sup)
    # Then the bundle adjustment ran, its result was dropped, and the mapped model kept unchanged
    assert outcome.outcome == "shifted" and outcome.max_shift_px > 5
    assert kept is model and the_camera(kept).principal_point_x == before
    assert sup.timings["map"] > 0
    # And COLMAP's log level is what it was (pycolmap's bundle_adjustment resets it to INFO)
    assert pycolmap.logging.minloglevel == 2


def the_camera(model: Any) -> Any:
    (camera,) = model.cameras.values()
    return camera
