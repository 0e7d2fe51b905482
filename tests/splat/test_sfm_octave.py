"""SIFT's scale (sfm_options.sift_scale) and the fall-back to the doubled first octave (sfm.py's
_sparse_model): photos larger than `max_image_size` are seen undoubled at their own size, and a
capture that does not register in full that way is extracted again with the doubled octave."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("pycolmap")

from daemon.errors import JobError  # noqa: E402
from daemon.handlers.splat.sfm import run_sfm  # noqa: E402
from daemon.handlers.splat.sfm_options import SfmOptions, sift_scale  # noqa: E402
from tests import scenes  # noqa: E402

FAST = SfmOptions(max_image_size=640, max_num_features=2048, num_threads=2, time_limit_s=300)
AUTO = replace(FAST, first_octave=None)  # the video frames' setting (job.py)

pytestmark = pytest.mark.usefixtures("quiet_colmap")  # tests/splat/conftest.py


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> scenes.Scene:
    """pycolmap's synthetic 640×480 views: sparse 31 px patches that SIFT finds only doubled."""
    return scenes.synthesize_colmap_scene(tmp_path_factory.mktemp("synthetic"), count=10)


def test_sift_doubles_small_photos_and_sees_larger_ones_undoubled_up_to_twice_the_size():
    assert sift_scale(4000, SfmOptions()) == (-1, 720)  # photos: doubled, whatever their size
    options = SfmOptions(max_image_size=720, first_octave=None)
    assert sift_scale(640, options) == (-1, 720)  # small: doubled, as COLMAP does
    assert sift_scale(720, options) == (-1, 720)
    assert sift_scale(960, options) == (0, 960)  # a phone video's frames: their own pixels
    assert sift_scale(4000, options) == (0, 1440)  # never more pixels than the doubled 720
    assert sift_scale(4000, replace(options, first_octave=-1)) == (-1, 720)  # set: as asked
    assert sift_scale(100, replace(options, first_octave=0)) == (0, 720)
    with pytest.raises(ValueError, match="first_octave"):
        SfmOptions(first_octave=-2)


def test_a_capture_that_builds_no_model_undoubled_is_extracted_again_doubled(synthetic, tmp_path):
    # Given photos larger than the SIFT size, whose features appear only in the doubled octave
    progress: list[float] = []
    options = replace(AUTO, max_image_size=600, cameras="single")
    # When SfM runs with the auto octave
    result = run_sfm(synthetic.paths, tmp_path, options, progress=progress.append)
    # Then the undoubled pass built no model, the doubled one registered every view, accurately
    assert result.sift == {
        "first_octave": -1, "max_image_size": 600, "fallback": "sfm_failed", "kept": "second"
    }  # fmt: skip
    assert result.registered == 10
    assert np.median(scenes.model_rotation_errors(synthetic, result)) < 1.0
    # And the stage's progress never went back across the two passes, and reached the end
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_the_undoubled_octave_when_asked_for_has_no_fall_back(synthetic, tmp_path):
    options = replace(FAST, max_image_size=600, cameras="single", first_octave=0)
    with pytest.raises(JobError) as failed:
        run_sfm(synthetic.paths, tmp_path, options)
    assert failed.value.code == "sfm_failed"


def test_a_capture_registered_in_part_undoubled_keeps_the_pass_that_registered_more(tmp_path):
    # Given a small rendered ring (320×240) and a SIFT size just below it
    ring = scenes.render_textured_scene(tmp_path / "ring", count=16, seed=0)
    # When SfM runs with the auto octave: undoubled at 320 px first
    result = run_sfm(ring.paths, tmp_path / "work", replace(AUTO, max_image_size=300))
    # Then that pass registered only part of the ring, and the doubled pass, which registered it
    # all, is the one kept
    fallback = result.sift.pop("fallback")
    registered = int(fallback.removeprefix("registered ").split("/")[0])
    print(f"undoubled pass: {fallback}; kept {result.sift}")
    assert registered < 16 and fallback.endswith("/16")
    assert result.sift == {"first_octave": -1, "max_image_size": 300, "kept": "second"}
    assert result.registered == 16
    assert np.median(scenes.model_rotation_errors(ring, result)) < 1.0


def test_frames_larger_than_the_sift_size_that_register_undoubled_take_one_pass(tmp_path):
    # Given a ring of views larger than the SIFT size (800×600 against 720)
    ring = scenes.render_textured_scene(tmp_path / "ring", count=12, seed=1, size=(800, 600))
    # When SfM runs with the auto octave
    result = run_sfm(ring.paths, tmp_path / "work", replace(AUTO, max_image_size=720))
    # Then SIFT saw them undoubled at their own size, every view registered in that one pass
    assert result.sift == {"first_octave": 0, "max_image_size": 800}
    assert result.registered == 12
    assert np.median(scenes.model_rotation_errors(ring, result)) < 1.0
