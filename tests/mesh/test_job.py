"""The mesh kind through the queue, as in production: `python -m daemon enqueue` (a v1 spec and the
replaced model worker's job data), worker processes on a spot instance (the fake IMDS), rows in
Supabase, outputs in S3, checkpoints between stages, signed callbacks.

One worker serves bad uploads (each failing with its own code, the worker going on) and then a good
one, which a spot notice interrupts after its first stages; a second worker resumes it from the
checkpoint at the first unfinished stage and completes it.
"""

from __future__ import annotations

import json
import re
from functools import partial

import pytest

from daemon.handlers.mesh.tools import run_tool
from tests import meshes
from tests.fixtures_daemon import enqueue_cli, wait_until

pytestmark = pytest.mark.slow

OUTPUTS = {"manifest.json", "model.glb", "model_lod0.glb", "model_lod1.glb", "preview.glb", "thumbnail.png",
           "thumbnail.webp"}  # fmt: skip


def mesh_spec(job_id: str, url: str, name: str, callback: str, **params) -> dict:
    return {"spec_version": 1, "job_id": job_id, "kind": "mesh", "inputs": [{"url": url, "name": name}],
            "params": params, "callback_url": callback}  # fmt: skip


def test_mesh_jobs_through_the_queue_bad_uploads_fail_and_a_preempted_model_resumes_elsewhere(
    full_env, file_server, start_worker, jobs_rows, s3_bucket, imds, webhook_receiver, tmp_path
):
    server, bucket = s3_bucket
    s3 = server.client()
    hook = f"{webhook_receiver.url}/hooks/mesh"
    sphere = meshes.sphere_mesh(segments=48, texture_size=512)
    # Given uploads that are not models, a model whose texture claims 16k×16k pixels, a GLB whose chunk
    # lengths lie (sent as the replaced worker's job data), and then a textured OBJ with its MTL, zipped
    notes = file_server.add("mesh-notes.txt", b"these are not the triangles you are looking for\n" * 20)
    huge_png = meshes.png_claiming(16384, 16384)
    huge = meshes.zipped(tmp_path / "huge.zip", meshes.gltf_with_texture_file(sphere, huge_png))
    glb = bytearray(meshes.textured_sphere(tmp_path / "s.glb").read_bytes())
    glb[12:16] = (len(glb) * 2).to_bytes(4, "little")  # the JSON chunk runs past the end of the file
    good = meshes.zipped(tmp_path / "chair.zip", meshes.obj_files(sphere))
    enqueue_cli(full_env, mesh_spec("mesh-bad-notes", notes, "notes.txt", hook))
    enqueue_cli(full_env, mesh_spec("mesh-bad-huge", file_server.add("mesh-huge.zip", huge.read_bytes()),
                                    "huge.zip", hook))  # fmt: skip
    cut = file_server.add("mesh-cut.glb", bytes(glb))
    enqueue_cli(full_env, {"jobId": "mesh-bad-chunks", "sourceUrl": cut, "sourceFormat": "glb",
                           "options": {"dracoCompression": 7}})  # fmt: skip
    job_id = "mesh-ok-1"
    enqueue_cli(full_env, mesh_spec(job_id, file_server.add("mesh-chair.zip", good.read_bytes()), "chair.zip",
                                    hook, lod_targets=[0.5, 0.1], max_texture_size=256))  # fmt: skip

    # When a worker on a spot instance serves them, and gets its notice once the good model is in its
    # levels of detail
    first = start_worker({**full_env, "IMDS_URL": imds.url, "SPOT_POLL_INTERVAL_S": "0.2"}, name="spot")

    def failed_row(name: str) -> dict | None:
        return next((r for r in jobs_rows(id=name) if r["status"] == "failed"), None)

    failed = {
        name: wait_until(partial(failed_row, name), timeout=120, message=lambda: first.logs()[-3000:])
        for name in ("mesh-bad-notes", "mesh-bad-huge", "mesh-bad-chunks")
    }
    wait_until(
        lambda: any(r["stage"] in ("lods", "thumbnail") for r in jobs_rows(id=job_id)),
        timeout=180, interval=0.2, message=lambda: first.logs()[-4000:],
    )  # fmt: skip
    imds.trigger_interruption("terminate", in_seconds=120)

    # Then each bad upload failed with its own code, in the row and in the callback
    assert {name: row["error_code"] for name, row in failed.items()} == {
        "mesh-bad-notes": "not_a_model",
        "mesh-bad-huge": "texture_too_large",
        "mesh-bad-chunks": "corrupt_model",
    }
    assert "16384×16384" in failed["mesh-bad-huge"]["error_message"]
    codes = {e.json["data"]["job_id"]: e.json["data"]["error"]["code"]
             for e in webhook_receiver.events if e.type == "job.failed"}  # fmt: skip
    assert codes == {"mesh-bad-notes": "not_a_model", "mesh-bad-huge": "texture_too_large"}
    # And the worker checkpointed the good job and requeued it
    assert first.wait(timeout=60) == 0, first.logs()[-4000:]
    row = jobs_rows(id=job_id)[0]
    assert (row["status"], row["error_code"], row["attempt"]) == ("requeued", "preempted", 1)
    assert s3.list_objects_v2(Bucket=bucket, Prefix=f"checkpoints/{job_id}/").get("KeyCount", 0) >= 1

    # When another worker takes it
    second = start_worker(full_env, name="replacement")
    done = wait_until(
        lambda: next((r for r in jobs_rows(id=job_id) if r["status"] == "completed"), None),
        timeout=300, interval=1.0, message=lambda: second.logs()[-4000:],
    )  # fmt: skip
    # Then it restored the finished stages rather than redoing them
    resumed = second.logs()
    # (the notice may land in the LODs or in the thumbnail)
    restored = r"restored stages read, analyze, optimize(, lods)? from attempt 1"
    assert re.search(restored, resumed), resumed[:5000]
    assert "read finished in an earlier run over this folder" in resumed
    assert done["attempt"] == 2 and set(done["outputs"]) == OUTPUTS

    # And every output is in S3; each GLB passes the validator, its texture within the cap
    folder = tmp_path / "outputs"
    folder.mkdir()
    for name in OUTPUTS:
        body = s3.get_object(Bucket=bucket, Key=f"jobs/{job_id}/{name}")["Body"].read()
        (folder / name).write_bytes(body)
        assert done["outputs"][name]["size"] == len(body), name
    for name in OUTPUTS - {"manifest.json", "thumbnail.png", "thumbnail.webp"}:
        assert run_tool("validate", {"path": str(folder / name)})["errors"] == 0, name
        textures = run_tool("analyze", {"path": str(folder / name)})["textures"]
        assert textures and all(max(t["width"], t["height"]) <= 256 for t in textures), name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["attempt"] == 2 and manifest["source"]["format"] == "obj" and manifest["source"]["zipped"]
    assert [level["name"] for level in manifest["lods"]["levels"]] == ["model_lod0.glb", "model_lod1.glb",
                                                                         "preview.glb"]  # fmt: skip

    # And the customer heard: requeued, then one completed with the outputs and the manifest; the
    # checkpoints are gone
    completed = webhook_receiver.wait_for(lambda e: e.type == "job.completed", timeout=30)
    assert completed.json["data"]["result"] == done["result"]
    mine = [e.type for e in webhook_receiver.events if e.json["data"]["job_id"] == job_id]
    assert mine.count("job.completed") == 1 and mine.index("job.requeued") < mine.index("job.completed")
    checkpoints = f"checkpoints/{job_id}/"
    wait_until(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=checkpoints).get("KeyCount") == 0, timeout=30)
