"""The `splat_video` job end to end on CPU, through the real worker with Supabase rows, S3 (moto) and
signed callbacks: broken and unfit videos each fail with their own code and the worker goes on; a phone
video (stored sideways with a display rotation, some frames blurred) becomes a splat and a bundle.

Good video: tests/videos.py's orbit of the textured room, 120 frames at 10 fps (12 s), shown upright
as 240×320 portrait, stored 320×240 with rotation 90; fps 2.5 → 30 slices of 4 frames (12° of orbit
each), 29 frames kept; 100 training steps (the floor). (At 2 fps, 15 frames 24° apart, only 8 registered: too
sparse a ring for SfM, as with photos.)
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from daemon.handlers.splat.sfm_refine import OUTCOMES
from tests import videos
from tests.fixtures_daemon import enqueue_cli, wait_until

pytestmark = pytest.mark.slow

BLURRED = (9, 10, 11, 21, 40, 41, 42, 43, 70, 71)
"""Frames blurred before encoding: the whole slice 40–43 (a whip pan: the slice is dropped), most of
8–11, one of 20–23 and half of 68–71. No chosen frame may be one of these."""

TRAIN = {"iterations": 100, "holdout_every": 4, "seed": 0, "fps": 2.5}


def video_spec(job_id: str, url: str, name: str, callback: str, **params) -> dict:
    return {
        "spec_version": 1,
        "job_id": job_id,
        "kind": "splat_video",
        "inputs": [{"url": url, "name": name}],
        "params": {**TRAIN, **params},
        "callback_url": callback,
    }


def noise_video(path: Path) -> Path:
    """A video of random noise at near-lossless quality: over 1 MiB in a second of 320×240."""
    rng = np.random.default_rng(0)
    frames = (rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(10))
    videos.encode_video(path, frames, crf=0)
    return path


@pytest.fixture(scope="module")
def video_urls(file_server, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Job name → (URL, file name) of every video the test sends."""
    folder = tmp_path_factory.mktemp("videos")
    files = {
        "phone": videos.write_orbit_video(
            folder / "phone.mp4", frames=120, size=(240, 320), rotation=90, blur=BLURRED
        ).path,
        "html": videos.write_html(folder / "page.mp4"),
        "audio": videos.write_audio_only(folder / "voice.m4a"),
        "truncated": videos.write_truncated_mp4(folder / "cut.mp4"),
        "still": videos.write_orbit_video(folder / "still.mp4", frames=40, still=(0, 40), supersample=1).path,
        "noise": noise_video(folder / "noise.mp4"),
    }
    return {job: (file_server.add(f"video-{p.name}", p.read_bytes()), p.name) for job, p in files.items()}


FAILURES = {
    # job: (params, expected code, words the message must hold)
    "html": ({}, "not_a_video", ("page.mp4 is an HTML page (served as video/mp4)",)),  # at the first bytes
    "audio": ({}, "audio_only", ("voice.m4a",)),
    "truncated": ({}, "corrupt_video", ("cut.mp4",)),
    "long": ({"max_duration_s": 5}, "video_too_long", ("max_duration_s",)),
    "still": ({}, "too_few_sharp_frames", ("still.mp4", "9 as duplicates", "standing still")),
    "noise": ({"max_video_mb": 1}, "video_too_large", ("max_video_mb = 1 MiB",)),
}


def test_video_jobs_bad_videos_fail_each_with_its_code_then_a_phone_video_completes(
    full_env, start_worker, jobs_rows, s3_bucket, webhook_receiver, video_urls
):
    callback = f"{webhook_receiver.url}/hooks/video"
    # Given six unusable video jobs queued before a good one (the "long" job sends the phone video)
    specs = []
    for job, (params, _, _) in FAILURES.items():
        url, name = video_urls["phone" if job == "long" else job]
        specs.append(video_spec(f"video-{job}", url, name, callback, **params))
    url, name = video_urls["phone"]
    specs.append(video_spec("video-phone", url, name, callback, bundle=True))
    for spec in specs:
        enqueue_cli(full_env, spec)

    # When one worker serves them all
    worker = start_worker(full_env)

    # Then each unusable video fails with its own code and a message naming what was wrong
    for job, (_, code, words) in FAILURES.items():
        row = wait_until(
            lambda job=job: next((r for r in jobs_rows(id=f"video-{job}") if r["status"] == "failed"), None),
            timeout=120,
            message=lambda: worker.logs()[-3000:],
        )
        assert row["error_code"] == code, (job, row["error_message"])
        assert all(word in row["error_message"] for word in words), (job, row["error_message"])

    # and the failure callbacks say the same
    def failed() -> dict[str, str]:
        events = [e for e in webhook_receiver.events if e.type == "job.failed"]
        return {e.json["data"]["job_id"]: e.json["data"]["error"]["code"] for e in events}

    wait_until(lambda: len(failed()) == len(FAILURES), timeout=30)
    assert failed() == {f"video-{job}": code for job, (_, code, _) in FAILURES.items()}

    # And the worker goes on to complete the phone video
    row = wait_until(
        lambda: next((r for r in jobs_rows(id="video-phone") if r["status"] == "completed"), None),
        timeout=400,
        interval=1.0,
        message=lambda: worker.logs()[-5000:],
    )
    manifest = row["result"]
    frames = manifest["frames"]
    # with the rotation applied (portrait frames) and one frame from each of the 30 slices but the
    # blurred-through one, none of them a blurred frame
    assert frames["video"]["rotation"] == 90 and frames["size"] == [240, 320]
    assert (frames["chosen"], frames["dropped_blurred"], frames["dropped_still"]) == (29, 1, 0)
    chosen = [round(t * videos.FPS) for t in frames["times_s"]]
    assert not set(chosen) & set(BLURRED), chosen
    # and SfM placed most frames with one shared camera
    assert manifest["sfm"]["registered"] >= 24, manifest["sfm"]
    assert manifest["sfm"]["principal_point"] in OUTCOMES  # refined or why not (test_sfm_refine.py)
    assert set(manifest["timings_s"]) == {"download", "frames", "sfm", "train", "evaluate", "export"}
    assert manifest["metrics"]["psnr"] > manifest["metrics"]["initial_psnr"] + 2.0, manifest["metrics"]

    # And the bundle in S3 holds the PLY, the cameras (JSON and COLMAP text), the preview and manifest
    server, bucket = s3_bucket
    assert set(row["outputs"]) >= {"splat.ply", "cameras.json", "manifest.json", "bundle.zip"}
    body = server.client().get_object(Bucket=bucket, Key="jobs/video-phone/bundle.zip")["Body"].read()
    with zipfile.ZipFile(io.BytesIO(body)) as bundle:
        names = set(bundle.namelist())
        assert names == {
            "splat.ply", "cameras.json", "preview.png", "manifest.json",
            "colmap/cameras.txt", "colmap/images.txt", "colmap/points3D.txt",
            "colmap/rigs.txt", "colmap/frames.txt",  # COLMAP 3.12+'s rig model: one rig, a frame per image
        }  # fmt: skip
        cameras = json.loads(bundle.read("cameras.json"))
        colmap_cameras = [
            line
            for line in bundle.read("colmap/cameras.txt").decode().splitlines()
            if not line.startswith("#")
        ]
        assert json.loads(bundle.read("manifest.json"))["frames"] == frames
    assert manifest["outputs"]["bundle.zip"]["size"] == len(body)
    assert len(cameras["views"]) == manifest["sfm"]["registered"]
    # (undistortion trims a pixel or two off the 240×320 frames, but they stay portrait)
    assert all(230 < v["width"] <= 240 and 310 < v["height"] <= 320 for v in cameras["views"])
    assert all(v["source"].startswith("phone.mp4 @ ") for v in cameras["views"])
    assert len(colmap_cameras) == 1  # one shared camera

    completed = webhook_receiver.wait_for(lambda e: e.type == "job.completed", timeout=30)
    assert completed.json["data"]["result"] == manifest
