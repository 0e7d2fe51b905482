"""The splat job's pieces that need no servers: the work folder's stage records, the params → gsplat
mapping, the held-out split, and each failure mode of training and export getting its own code."""

from __future__ import annotations

import math

import pytest
import torch

from daemon.errors import JobError
from daemon.handlers.splat import job, train_stage
from daemon.handlers.splat.params import SplatParams
from daemon.handlers.splat.scene import Scene, split_holdout
from daemon.handlers.splat.train import TrainConfig, Trainer
from daemon.handlers.splat.workspace import Workspace
from tests.splat.test_train import make_scene, small_config


def test_stage_records_mark_finished_stages_and_can_be_forgotten(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.finished("sfm") is None
    ws.record("images", {"used": 3})
    ws.record("sfm", {"registered": 3})
    ws.record("train", {"steps": 10})
    assert ws.finished("sfm") == {"registered": 3}
    # Redoing SfM invalidates it and everything after it, not what came before
    ws.forget_from("sfm")
    assert ws.finished("images") == {"used": 3}
    assert ws.finished("sfm") is None and ws.finished("train") is None
    assert not list((tmp_path / "stages").glob(".*"))  # no temp files left behind
    with pytest.raises(ValueError, match="unknown stage .bake.: one of download, frames"):
        ws.record("bake", {})


def test_legacy_parameter_names_map_to_gsplats():
    params = SplatParams(
        iterations=12_000,
        position_lr_init=2e-4,
        position_lr_final=2e-6,
        feature_lr=5e-3,
        opacity_lr=0.04,
        scaling_lr=0.006,
        rotation_lr=0.002,
        sh_degree=2,
        densify_grad_threshold=3e-4,
        max_gaussians=50_000,
        seed=9,
    )
    config = TrainConfig.from_params(params)
    assert (config.steps, config.seed, config.max_gaussians, config.sh_degree) == (12_000, 9, 50_000, 2)
    assert (config.means_lr_init, config.means_lr_final) == (2e-4, 2e-6)
    assert config.sh0_lr == 5e-3 and math.isclose(config.shN_lr, 5e-3 / 20)
    assert (config.opacities_lr, config.scales_lr, config.quats_lr) == (0.04, 0.006, 0.002)
    assert config.grow_grad2d == 3e-4
    # A long run keeps gsplat's schedule; the densification window ends at half the run
    assert (config.refine_start_iter, config.refine_every, config.sh_degree_interval) == (500, 100, 1000)
    assert config.refine_stop_iter == 6_000


def test_presets_set_the_steps_and_short_runs_start_densifying_earlier():
    assert TrainConfig.from_params(SplatParams(preset="low")).steps == 3_000
    assert TrainConfig.from_params(SplatParams(preset="best")).steps == 30_000
    short = TrainConfig.from_params(SplatParams(iterations=300))
    assert (short.refine_start_iter, short.refine_every, short.sh_degree_interval) == (30, 100, 60)


def test_every_nth_view_is_held_out_only_when_there_are_enough():
    assert split_holdout(16, 8) == [i % 8 == 0 for i in range(16)]
    assert split_holdout(15, 8) == [False] * 15  # fewer than two per held-out view
    assert split_holdout(10, 0) == [False] * 10


def test_a_diverged_model_fails_with_non_finite_loss():
    cams, points, colors = make_scene()
    trainer = Trainer(cams, points, colors, small_config())
    with torch.no_grad():
        trainer.params["sh0"][0] = float("nan")
    with pytest.raises(JobError) as failed:
        trainer.train_step()
    assert failed.value.code == "non_finite_loss" and "step 0" in failed.value.message


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"), MemoryError()])
def test_out_of_memory_says_which_params_bound_memory(error):
    params = SplatParams(max_image_size=2000, max_gaussians=300_000)
    with pytest.raises(JobError) as failed, train_stage.memory_guard("training", params):
        raise error
    assert failed.value.code == "out_of_memory" and not failed.value.retryable
    assert "max_image_size (now 2000)" in failed.value.message
    assert "max_gaussians (now 300000)" in failed.value.message


def trained_workspace(tmp_path) -> tuple[Workspace, Scene, SplatParams]:
    cams, points, colors = make_scene()
    params = SplatParams(iterations=100, sh_degree=1)
    trainer = Trainer(cams, points, colors, TrainConfig.from_params(params))
    ws = Workspace(tmp_path)
    ws.model.parent.mkdir(parents=True)
    history = {"step": [1, 2], "loss": [0.3, 0.2], "gaussians": [300, 300], "eval_step": [2], "psnr": [12.0]}
    torch.save({"params": {k: v.detach() for k, v in trainer.params.items()}, "history": history}, ws.model)
    return ws, Scene(train=cams[1:], test=cams[:1], points=points, colors=colors), params


def test_export_writes_every_output_from_the_saved_model(tmp_path):
    ws, scene, params = trained_workspace(tmp_path)
    paths = job.export(ws, scene, params, ["a.jpg", "b.jpg", "c.jpg"])
    assert set(paths) == set(job.OUTPUT_TYPES)
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert paths["preview.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unwritable_output_fails_with_export_failed(tmp_path):
    # Given an output path that cannot be written (a directory stands where the PLY goes)
    ws, scene, params = trained_workspace(tmp_path)
    (ws.outputs / "splat.ply").mkdir(parents=True)
    # When export runs, then the job fails with the export code and the OS's reason
    with pytest.raises(JobError) as failed:
        job.export(ws, scene, params, [])
    assert failed.value.code == "export_failed"
    assert "IsADirectoryError" in failed.value.message


def test_a_video_jobs_frames_come_back_from_a_checkpoint_without_the_video(tmp_path):
    from types import SimpleNamespace

    from daemon.adapters.checkpoints import Checkpoints, LocalBlobs
    from daemon.handlers.splat import frames, resume
    from daemon.handlers.splat.params_video import SplatVideoParams
    from tests import videos

    # Given attempt 1 of a video job that chose its frames, which were checkpointed
    video = videos.small_video(tmp_path / "clip.mp4", frames=40).path
    blobs = LocalBlobs(tmp_path / "ckpt")
    first = Workspace(tmp_path / "w1")
    ctx1 = SimpleNamespace(checkpoints=Checkpoints(blobs, "v-1", attempt=1))
    params = SplatVideoParams(fps=2, min_images=3)
    chosen = job.checkpointed(
        ctx1, first, "frames", lambda: frames.choose_frames(first, video, params, print)
    )
    assert chosen["paths"] == [f"{i:04d}.jpg" for i in range(1, 9)]
    # When attempt 2 restores on another machine, where the video was never downloaded
    video.unlink()
    second = Workspace(tmp_path / "w2")
    assert resume.restore(SimpleNamespace(checkpoints=Checkpoints(blobs, "v-1", attempt=2)), second)
    # Then the frames stage is finished there with the same record and the same frame bytes
    again = frames.choose_frames(second, video, params, print)
    assert again == chosen
    for name in chosen["paths"]:
        assert (second.images / name).read_bytes() == (first.images / name).read_bytes()


def test_video_frames_take_the_auto_sift_octave_and_photos_the_doubled_one():
    images = {"sources": ["b.jpg", "a.jpg", "c.jpg"]}  # not numbered as shot: not a walk
    photos = job.sfm_options(images, SplatParams(), video=False, threads=0)
    frames = job.sfm_options(images, SplatParams(), video=True, threads=3)
    assert (photos.first_octave, photos.matcher, photos.cameras) == (-1, "auto", "auto")
    assert not photos.ordered
    assert (frames.first_octave, frames.matcher, frames.cameras) == (None, "sequential_loop", "single")
    assert frames.num_threads == 3 and photos.num_threads >= 1
