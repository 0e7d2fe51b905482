"""Tenant isolation end to end: a live worker (Supabase rows, S3, signed callbacks) given another
tenant's job id or keys refuses them, and the victim's ledger, row and outputs stay as they were."""

from __future__ import annotations

import json

import pytest
from redis import Redis

from daemon.adapters.ledger import Ledger
from tests.fixtures_daemon import enqueue_cli, sample_jpeg, wait_until
from tests.test_worker_lifecycle import daemon_cli, push_raw_job

pytestmark = pytest.mark.slow

OWNER_A = "0b5c7d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"
OWNER_B = "9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f"


def s3_spec(job_id: str, owner: str, key: str, callback_url: str, **extra) -> dict:
    return {
        "spec_version": 1,
        "job_id": job_id,
        "kind": "inspect",
        "owner_id": owner,
        "inputs": [{"s3_key": key, "name": "photo.jpg"}],
        "callback_url": callback_url,
        **extra,
    }


def test_another_tenants_job_id_and_keys_are_refused_and_the_victim_is_untouched(
    full_env, start_worker, jobs_rows, s3_bucket, webhook_receiver
):
    # Given per-owner input folders, each owner's upload in its own
    server, bucket = s3_bucket
    s3 = server.client()
    key_a, key_b = f"uploads/{OWNER_A}/a.jpg", f"uploads/{OWNER_B}/b.jpg"
    s3.put_object(Bucket=bucket, Key=key_a, Body=sample_jpeg(1))
    s3.put_object(Bucket=bucket, Key=key_b, Body=sample_jpeg(2))
    env = {**full_env, "S3_INPUT_PREFIXES": "uploads/{owner_id}/"}
    redis = Redis.from_url(env["REDIS_URL"])
    hook = webhook_receiver.url
    # And owner A's job, completed
    enqueue_cli(env, s3_spec("victim", OWNER_A, key_a, hook))
    worker = start_worker(env)
    webhook_receiver.wait_for(lambda e: e.type == "job.completed", timeout=60)
    # (rq records the job finished after its callback is queued: a push before that is overwritten)
    wait_until(lambda: redis.hget("rq:job:victim", "status") == b"finished", timeout=60)
    (victim_row,) = jobs_rows(id="victim")
    victim_outputs = s3.list_objects_v2(Bucket=bucket, Prefix="jobs/victim/")["Contents"]

    # When owner B's job reuses its id, written to Redis past the producers (as `rq enqueue` could)
    stolen = s3_spec("victim", OWNER_B, key_b, f"{hook}/b")
    push_raw_job(redis, "victim", ["daemon.entry.run_job", None, [stolen], {}])
    wait_until(lambda: redis.hget("rq:job:victim", "status") == b"failed", timeout=60, message=worker.logs)
    # And a broken spec under the same id (an unknown field), the same way
    broken = {**stolen, "params": {"colour": "red"}}
    push_raw_job(redis, "victim", ["daemon.entry.run_job", None, [broken], {}])
    wait_until(lambda: redis.hget("rq:job:victim", "status") == b"failed", timeout=60, message=worker.logs)
    # And owner B's fresh job names owner A's upload as its input: our CLI refuses to enqueue it, and a
    # producer that cannot know the roots (the Node example) puts it on the queue
    thief = s3_spec("thief", OWNER_B, key_a, f"{hook}/b")
    refused = daemon_cli(env, "enqueue", json.dumps(thief))
    assert refused.returncode != 0 and "s3_key_not_allowed" in refused.stderr
    push_raw_job(redis, "thief", ["daemon.entry.run_job", None, [thief], {}])
    # (and an honest job of owner B's follows, so the worker must have served past all of them)
    enqueue_cli(env, s3_spec("honest", OWNER_B, key_b, f"{hook}/b"))
    webhook_receiver.wait_for(
        lambda e: e.type == "job.completed" and e.json["data"]["job_id"] == "honest", 60
    )

    # Then the reused id was refused both times, by name, and nothing of the victim moved: its ledger,
    # its row (owner, attempt, status, outputs), its output objects, and no callback went out for it
    logs = worker.logs()
    assert "job_id victim belongs to another owner" in logs
    assert (
        "unknown_field" in logs
        and "refusal not reported to the row or callback: victim is another job's" in logs
    )
    entry = Ledger(redis).get("victim")
    assert (entry.attempt, entry.status, entry.failures) == (1, "completed", 0)
    assert jobs_rows(id="victim") == [victim_row]
    assert str(victim_row["owner_id"]) == OWNER_A and victim_row["attempt"] == 1
    assert s3.list_objects_v2(Bucket=bucket, Prefix="jobs/victim/")["Contents"] == victim_outputs
    victim_events = [e for e in webhook_receiver.events if e.json["data"]["job_id"] == "victim"]
    assert victim_events[-1].type == "job.completed"
    assert {e.json["data"]["attempt"] for e in victim_events} == {1} and all(
        e.path == "/" for e in victim_events
    )
    # And the thief's job failed with its own code, on its row and its callback, having written nothing
    (thief_row,) = jobs_rows(id="thief")
    assert thief_row["status"] == "failed" and thief_row["error_code"] == "s3_key_not_allowed"
    assert "inputs[0].s3_key" in thief_row["error_message"]
    failed = webhook_receiver.wait_for(
        lambda e: e.type == "job.failed" and e.json["data"]["job_id"] == "thief"
    )
    assert failed.json["data"]["error"]["code"] == "s3_key_not_allowed"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="jobs/thief/")
    # And the worker served on
    (honest_row,) = jobs_rows(id="honest")
    assert honest_row["status"] == "completed" and str(honest_row["owner_id"]) == OWNER_B
    assert worker.proc.poll() is None
