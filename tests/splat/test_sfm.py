"""The SfM stage on synthetic scenes with known cameras (tests/scenes.py): accuracy, matchers, the
error codes and stopping. Small images and 2 threads keep the whole file around half a minute."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

pycolmap = pytest.importorskip("pycolmap")

from daemon.attempt.interrupts import CANCEL_SIGNAL, PREEMPT_SIGNAL, Interrupts  # noqa: E402
from daemon.errors import JobCanceled, JobError  # noqa: E402
from daemon.handlers.splat.sfm import run_sfm  # noqa: E402
from daemon.handlers.splat.sfm_matching import VIDEO_MATCHER, choose_matcher  # noqa: E402
from daemon.handlers.splat.sfm_options import MATCHERS, SfmOptions  # noqa: E402
from daemon.handlers.splat.workspace import SfmLayout  # noqa: E402
from tests import scenes  # noqa: E402

FAST = SfmOptions(max_image_size=640, max_num_features=2048, num_threads=2, time_limit_s=300)


pytestmark = pytest.mark.usefixtures("quiet_colmap")  # tests/splat/conftest.py


@pytest.fixture(scope="module")
def ring(tmp_path_factory) -> scenes.Scene:
    """16 views of the textured room from a full circle around the box."""
    return scenes.render_textured_scene(tmp_path_factory.mktemp("ring"), count=16, seed=0)


def helpers_still_running() -> list[str]:
    """Names of run_sfm's helper threads that do not end within a second (they have signalled
    completion when run_sfm returns; only the thread's own exit may still be in flight)."""
    helpers = [t for t in threading.enumerate() if t.name.startswith("sfm-")]
    for thread in helpers:
        thread.join(1)
    return [t.name for t in helpers if t.is_alive()]


def test_ring_registers_every_view_with_accurate_rotations(ring, tmp_path):
    # Given 16 photos of a textured scene from known cameras on a circle
    progress: list[float] = []
    # When SfM runs with its default grouping (photos without EXIF, all of one size)
    result = run_sfm(ring.paths, tmp_path, FAST, progress=progress.append)
    # Then every image is registered, and after a similarity alignment the cameras' rotations match
    errors = scenes.model_rotation_errors(ring, result)
    print(
        f"ring: registered {result.registered}/{result.total}, median rotation error {np.median(errors):.3f}°"
    )
    assert result.registered == result.total == 16
    assert result.cameras == 1  # one shared camera: no EXIF, one size (COLMAP's AUTO made 16)
    assert result.camera_check == "consistent"  # ... and the check after mapping agreed
    assert result.pycolmap == {"package": "pycolmap", "version": pycolmap.__version__, "cuda": False}
    assert np.median(errors) < 1.0
    assert result.points > 200 and result.mean_reprojection_error < 1.0
    # And the model handed to training is undistorted pinhole, with its images beside it
    model = pycolmap.Reconstruction(result.model_dir)
    assert {camera.model_name for camera in model.cameras.values()} == {"PINHOLE"}
    assert len(model.cameras) == 1
    assert len(list(result.images_dir.iterdir())) == 16
    assert set(result.timings) == {"extract", "match", "map", "undistort"}
    # And progress only moves forward, to the end
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_sequential_matcher_on_ordered_frames_reruns_over_leftovers(tmp_path):
    # Given ordered frames along a 150° arc, and a first attempt that hit its time limit midway
    scene = scenes.render_textured_scene(tmp_path / "frames", count=14, seed=3, arc_deg=150)
    started = time.monotonic()
    with pytest.raises(JobError) as timed_out:
        run_sfm(scene.paths, tmp_path / "work", replace(FAST, time_limit_s=0.3))
    assert timed_out.value.code == "sfm_timeout" and not timed_out.value.retryable
    assert time.monotonic() - started < 60  # a hang guard: the limit stops it within ~1 s
    # When SfM runs again in the same workdir with the sequential matcher and a short overlap
    options = replace(FAST, matcher="sequential", sequential_overlap=3, cameras="single")
    result = run_sfm(scene.paths, tmp_path / "work", options)
    # Then it matched far fewer pairs than exhaustive would, and still registered every frame
    with pycolmap.Database.open(SfmLayout(tmp_path / "work").database) as db:
        pairs = db.num_matched_image_pairs()
    assert pairs < 14 * 13 // 2 * 0.6
    errors = scenes.model_rotation_errors(scene, result)
    print(f"sequential: {pairs} pairs, registered {result.registered}/14, median {np.median(errors):.3f}°")
    assert result.registered == 14
    assert np.median(errors) < 1.0


def test_pycolmap_synthetic_dataset_runs_through(tmp_path):
    # Given pycolmap's own synthetic images with the poses it drew
    scene = scenes.synthesize_colmap_scene(tmp_path / "synthetic", count=10)
    # When SfM runs on them
    result = run_sfm(scene.paths, tmp_path / "work", replace(FAST, cameras="single"))
    # Then all views are registered at the right rotations
    errors = scenes.model_rotation_errors(scene, result)
    print(f"synthetic: registered {result.registered}/10, median rotation error {np.median(errors):.3f}°")
    assert result.registered == 10
    assert np.median(errors) < 1.0


def test_flat_grey_photos_have_no_features(tmp_path):
    # Given photos with nothing in them
    paths = scenes.write_flat_images(tmp_path / "flat", 5, (320, 240))
    # When SfM runs, then it fails as a featureless set, not as a crash
    with pytest.raises(JobError) as failed:
        run_sfm(paths, tmp_path / "work", FAST)
    assert failed.value.code == "sfm_no_features" and not failed.value.retryable
    assert "0 of 5 images" in failed.value.message


@pytest.mark.parametrize("count", [1, 2])
def test_too_few_or_unrelated_photos_build_no_model(tmp_path, count):
    # Given one photo, or two photos with features that show nothing in common
    paths = scenes.write_noise_images(tmp_path / "noise", count, (320, 240), seed=count)
    # When SfM runs, then no model can be built
    with pytest.raises(JobError) as failed:
        run_sfm(paths, tmp_path / "work", FAST)
    assert failed.value.code == "sfm_failed" and not failed.value.retryable


def test_too_few_registered_fails_with_counts_in_the_message(ring, tmp_path):
    # Given 8 views of the scene mixed with 10 unrelated images
    paths = ring.paths[:8] + scenes.write_noise_images(tmp_path / "noise", 10, (320, 240), seed=7)
    # When SfM must register at least half of them
    with pytest.raises(JobError) as failed:
        run_sfm(paths, tmp_path / "work", replace(FAST, min_registered_ratio=0.5))
    # Then it fails, saying how many were registered out of how many
    assert failed.value.code == "sfm_too_few_registered" and not failed.value.retryable
    assert re.fullmatch(r"registered [5-8] of 18 images \(need ≥ 50%\)", failed.value.message)


def test_should_stop_is_polled_during_long_steps_and_its_interrupt_propagates(ring, tmp_path):
    # Given a caller whose should_stop raises its own interrupt once matching is under way
    raised_at: list[float] = []

    def should_stop() -> bool:
        if any(thread.name == "sfm-match" for thread in threading.enumerate()):
            raised_at.append(time.monotonic())
            raise JobCanceled("canceled")
        return False

    # When SfM runs, then that very interrupt comes out, promptly, and pycolmap has stopped
    with pytest.raises(JobCanceled):
        run_sfm(ring.paths, tmp_path / "work", FAST, should_stop=should_stop)
    assert raised_at and time.monotonic() - raised_at[0] < 30  # a hang guard: the stop takes ~1 s
    assert not helpers_still_running()


def test_daemon_cancel_signal_stops_sfm_mid_call(ring, tmp_path):
    # Given the work-horse's interrupt handlers, and a cancel signal sent once matching is under way
    interrupts = Interrupts()
    saved = {signum: signal.getsignal(signum) for signum in (CANCEL_SIGNAL, PREEMPT_SIGNAL)}
    interrupts.install()
    sent_at: list[float] = []

    def send_cancel_when_matching(frame, event, arg) -> None:
        # Runs in every new thread as it starts (threading.setprofile): the signal goes out the moment
        # the matching thread exists, however short-lived it is, with no polling to miss it
        if not sent_at and threading.current_thread().name == "sfm-match":
            sent_at.append(time.monotonic())
            os.kill(os.getpid(), CANCEL_SIGNAL)

    threading.setprofile(send_cancel_when_matching)
    try:
        # When SfM runs, then the handler's JobCanceled comes out of run_sfm
        with pytest.raises(JobCanceled):
            run_sfm(ring.paths, tmp_path / "work", FAST)
    finally:
        threading.setprofile(None)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert sent_at and time.monotonic() - sent_at[0] < 30  # a hang guard: the stop takes ~1 s
    assert not helpers_still_running()


def test_should_stop_returning_true_stops_with_its_own_code(ring, tmp_path):
    # Given a plain predicate that turns true while features are being extracted
    calls = []

    def should_stop() -> bool:
        calls.append(threading.current_thread().name)
        return any(thread.name == "sfm-extract" for thread in threading.enumerate())

    # When SfM runs, then it stops with sfm_stopped, having polled only from the calling thread
    with pytest.raises(JobError) as stopped:
        run_sfm(ring.paths, tmp_path / "work", FAST, should_stop=should_stop)
    assert stopped.value.code == "sfm_stopped"
    assert set(calls) == {threading.current_thread().name}


def test_sequential_loop_matcher_closes_an_orbit_of_video_frames(tmp_path):
    # Given 24 ordered frames of one full circle around the box, as a video of an orbit gives
    scene = scenes.render_textured_scene(tmp_path / "frames", count=24, seed=5)
    # When SfM runs with one shared camera, a window of 3 frames and 2 loop candidates per frame
    options = replace(
        FAST, matcher="sequential_loop", sequential_overlap=3, loop_candidates=2, cameras="single"
    )
    result = run_sfm(scene.paths, tmp_path / "work", options)
    # Then (nearly) every frame is registered, with one camera, at accurate rotations
    errors = scenes.model_rotation_errors(scene, result)
    work = SfmLayout(tmp_path / "work")
    with pycolmap.Database.open(work.database) as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        names = sorted(ids)
        pairs = db.num_matched_image_pairs()
        closing = db.read_two_view_geometry(ids[names[0]], ids[names[-1]])
    print(
        f"sequential_loop: {pairs} pairs, registered {result.registered}/24, rotation error median "
        f"{np.median(errors):.3f}° max {errors.max():.3f}°, first–last inliers {len(closing.inlier_matches)}"
    )
    assert result.registered >= 23
    assert len(pycolmap.Reconstruction(work.best).cameras) == 1
    assert errors.max() < 1.0
    # And it matched the window and the retrieved pairs only, far fewer than exhaustive
    listed = [line.split() for line in work.pairs.read_text().splitlines()]
    assert pairs == len(listed) < 24 * 23 // 2 // 2
    # And the loop is closed: the last frame was matched to the first, beyond the window
    assert [names[0], names[-1]] in listed
    assert len(closing.inlier_matches) >= 30


def test_matcher_names_are_checked_and_video_has_one():
    assert VIDEO_MATCHER in MATCHERS
    with pytest.raises(ValueError, match="sequential_loop"):
        SfmOptions(matcher="loop")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SfmOptions(loop_candidates=-1)


def test_auto_matches_exhaustively_up_to_50_images_and_retrieves_pairs_above():
    assert [choose_matcher(n, FAST) for n in (2, 50, 51, 2000)] == ["exhaustive"] * 2 + ["retrieval"] * 2
    assert choose_matcher(500, replace(FAST, matcher="sequential")) == "sequential"


def test_retrieval_matching_registers_the_ring_with_a_few_pairs_per_image(ring, tmp_path):
    # Given the ring's 16 photos in shuffled order (retrieval must not rely on the input order)
    paths = list(ring.paths)
    order = np.random.default_rng(1).permutation(len(paths))
    shuffled = [paths[i] for i in order]
    # When SfM matches each photo with its 5 most similar only
    result = run_sfm(shuffled, tmp_path, replace(FAST, matcher="retrieval", retrieval_neighbors=5))
    # Then every photo is registered, from far fewer pairs than exhaustive's 120
    assert result.registered == result.total == 16
    with pycolmap.Database.open(tmp_path / "database.db") as db:
        pairs = db.num_matched_image_pairs()
    assert 16 * 5 // 2 <= pairs <= 16 * 5
