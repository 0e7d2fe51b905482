"""The pointcloud kind through the queue, as in production: `python -m daemon enqueue` (a v1 spec and the
replaced model worker's job data), worker processes on a spot instance (the fake IMDS), rows in
Supabase, outputs in S3, checkpoints between stages, signed callbacks.

One worker serves bad uploads (each failing with its own code, the worker going on) and then a survey,
which a spot notice interrupts while it is being tiled; a second worker resumes it from the checkpoint
at the first unfinished stage and completes it.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import partial

import laspy
import pytest

from daemon.samples import cloud_files, clouds
from tests.fixtures_daemon import enqueue_cli, wait_until

pytestmark = pytest.mark.slow


def cloud_spec(job_id: str, url: str, name: str, callback: str, **params) -> dict:
    return {"spec_version": 1, "job_id": job_id, "kind": "pointcloud", "inputs": [{"url": url, "name": name}],
            "params": params, "callback_url": callback}  # fmt: skip


def test_pointcloud_jobs_through_the_queue_bad_uploads_fail_and_a_preempted_survey_resumes_elsewhere(
    full_env, file_server, start_worker, jobs_rows, s3_bucket, imds, webhook_receiver, tmp_path
):
    server, bucket = s3_bucket
    s3 = server.client()
    hook = f"{webhook_receiver.url}/hooks/pointcloud"
    # Given a photo sent as a cloud, a small LAZ claiming 10¹² points (as the replaced worker's job
    # data), and then a 150,000-point survey
    photo = cloud_files.not_a_cloud(tmp_path / "site.png")
    enqueue_cli(full_env, cloud_spec("pc-bad-photo", file_server.add("pc-site.png", photo.read_bytes()),
                                     "site.png", hook))  # fmt: skip
    bomb = cloud_files.bomb_laz(tmp_path / "bomb.laz")
    bomb_url = file_server.add("pc-bomb.laz", bomb.read_bytes())
    enqueue_cli(full_env, {"jobId": "pc-bad-bomb", "sourceUrl": bomb_url, "sourceFormat": "laz"})
    survey = cloud_files.write_las(clouds.survey(150_000, seed=5, extent_m=80), tmp_path / "survey.laz")
    job_id = "pc-ok-1"
    survey_url = file_server.add("pc-survey.laz", survey.read_bytes())
    enqueue_cli(full_env, cloud_spec(job_id, survey_url, "survey.laz", hook))

    # When a worker on a spot instance serves them, and gets its notice once the survey is being cleaned
    # (cut in 16 tiles of about 10,000 points, so the notice comes while there are tiles left to work)
    small_tiles = {**full_env, "POINTCLOUD_TILE_POINTS": "10000"}
    first = start_worker({**small_tiles, "IMDS_URL": imds.url, "SPOT_POLL_INTERVAL_S": "0.2"}, name="spot")

    def failed_row(name: str) -> dict | None:
        return next((r for r in jobs_rows(id=name) if r["status"] == "failed"), None)

    failed = {
        name: wait_until(partial(failed_row, name), timeout=120, message=lambda: first.logs()[-3000:])
        for name in ("pc-bad-photo", "pc-bad-bomb")
    }
    wait_until(
        lambda: any(r["stage"] == "clean" for r in jobs_rows(id=job_id)),
        timeout=180, interval=0.1, message=lambda: first.logs()[-4000:],
    )  # fmt: skip
    imds.trigger_interruption("terminate", in_seconds=120)

    # Then each bad upload failed with its own code, and the worker went on
    assert {name: row["error_code"] for name, row in failed.items()} == {
        "pc-bad-photo": "not_a_point_cloud",
        "pc-bad-bomb": "too_many_points",
    }
    assert "1,000,000,000,000" in failed["pc-bad-bomb"]["error_message"]
    # And the worker checkpointed the survey and requeued it
    try:
        stopped = first.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the spot worker did not stop within 60 s of its notice:\n{first.logs()[-6000:]}")
    assert stopped == 0, first.logs()[-4000:]
    row = jobs_rows(id=job_id)[0]
    assert (row["status"], row["error_code"], row["attempt"]) == ("requeued", "preempted", 1)
    # with the checkpoints of read and of what it reached of clean and classify each smaller than the
    # cloud's records (36 B a point): the records and the tiles cut from them are read and cut again
    stored = s3.list_objects_v2(Bucket=bucket, Prefix=f"checkpoints/{job_id}/").get("Contents", [])
    sizes = {o["Key"].rsplit("-", 1)[-1]: o["Size"] for o in stored}
    assert "read.tar" in sizes, sizes
    assert all(size < 150_000 * 36 for name, size in sizes.items() if name != "tile.tar"), sizes

    # When another worker takes it
    second = start_worker(small_tiles, name="replacement")
    done = wait_until(
        lambda: next((r for r in jobs_rows(id=job_id) if r["status"] == "completed"), None),
        timeout=300, interval=1.0, message=lambda: second.logs()[-4000:],
    )  # fmt: skip
    # Then it restored the finished stages rather than redoing them (and the tiles the stage at hand had
    # finished, when the notice came inside a pass), and read the upload again to cut the same tiles
    resumed = second.logs()
    assert re.search(r"restored stages read, analyze(, clean)?(, classify)? from attempt 1", resumed), (
        resumed[:5000]
    )
    assert "reading the upload again" in resumed, resumed[:5000]
    assert done["attempt"] == 2

    # And the outputs are in S3: a COPC of every point, the tileset, the preview, the manifest
    outputs = set(done["outputs"])
    assert {"cloud.copc.laz", "preview.png", "manifest.json", "tiles/tileset.json"} <= outputs
    copc = tmp_path / "cloud.copc.laz"
    copc.write_bytes(s3.get_object(Bucket=bucket, Key=f"jobs/{job_id}/cloud.copc.laz")["Body"].read())
    assert len(laspy.CopcReader.open(str(copc)).query()) == 150_000
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"jobs/{job_id}/manifest.json")["Body"].read())
    assert manifest["attempt"] == 2 and manifest["analysis"]["points"] == 150_000
    for name in (n for n in outputs if n.startswith("tiles/")):
        assert s3.head_object(Bucket=bucket, Key=f"jobs/{job_id}/{name}")["ContentLength"] > 0

    # And the customer heard: requeued, then one completed; the checkpoints are gone
    webhook_receiver.wait_for(lambda e: e.type == "job.completed", timeout=30)
    mine = [e.type for e in webhook_receiver.events if e.json["data"]["job_id"] == job_id]
    assert mine.count("job.completed") == 1 and mine.index("job.requeued") < mine.index("job.completed")
    checkpoints = f"checkpoints/{job_id}/"
    wait_until(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=checkpoints).get("KeyCount") == 0, timeout=30)
