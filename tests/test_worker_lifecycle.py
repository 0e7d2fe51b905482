"""The worker's guarantees beyond the happy path: cancel, abandoned jobs, forged jobs, bad specs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from redis import Redis

from daemon.adapters.runtime import Runtime
from daemon.config import load_settings
from tests.fixtures_daemon import ROOT, sample_jpeg, wait_until
from tests.test_worker_faults import enqueue, held_spec, horse_pid, local_row, slow_spec, wait_status

pytestmark = pytest.mark.slow


def daemon_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def push_raw_job(redis: Redis, job_id: str, data: list, queue: str = "default") -> None:
    """Write an rq job's keys by hand, as any Redis client could (the Node producer does the same)."""
    now = "2026-11-25T00:00:00.000000Z"
    with redis.pipeline() as pipe:
        pipe.sadd("rq:queues", f"rq:queue:{queue}")
        pipe.hset(
            f"rq:job:{job_id}",
            mapping={
                "status": "queued",
                "created_at": now,
                "enqueued_at": now,
                "data": json.dumps(data),
                "origin": queue,
                "description": job_id,
                "timeout": "60",
            },
        )
        pipe.rpush(f"rq:queue:{queue}", job_id)
        pipe.execute()


def test_cancel_stops_a_running_job_within_seconds(
    daemon_env, file_server, start_worker, tmp_path, webhook_receiver
):
    # Given a running job
    enqueue(daemon_env, slow_spec(file_server, "cancel-me", 30, callback_url=webhook_receiver.url))
    worker = start_worker(daemon_env)
    wait_until(lambda: horse_pid(worker), timeout=30)
    wait_status(tmp_path, "cancel-me", "running", worker=worker)
    # When the operator cancels it, giving it 5 s to stop by itself before it would be killed
    done = daemon_cli(daemon_env, "cancel", "cancel-me", "--wait", "5")
    # Then it stopped by itself within those seconds; the row and the callback say canceled
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == "canceled"
    row = wait_status(tmp_path, "cancel-me", "canceled")
    assert row["error_code"] == "canceled"
    event = webhook_receiver.wait_for(lambda e: e.type == "job.canceled", timeout=30)
    assert event.json["data"]["status"] == "canceled"
    # And the worker goes on serving
    enqueue(daemon_env, slow_spec(file_server, "after-cancel", 0.1))
    wait_status(tmp_path, "after-cancel", "completed", worker=worker)


def test_a_long_job_keeps_heartbeating_and_the_parent_stays_responsive(
    daemon_env, file_server, start_worker, tmp_path, webhook_receiver
):
    # Given a job that runs for as long as the test holds its download
    enqueue(daemon_env, held_spec(file_server, "long-one", callback_url=webhook_receiver.url))
    worker = start_worker(daemon_env)
    first = wait_status(tmp_path, "long-one", "running", worker=worker)
    redis = Redis.from_url(daemon_env["REDIS_URL"])
    expiry = wait_until(lambda: redis.zrange("rq:wip:default", 0, -1, withscores=True), timeout=10)[0][1]
    # When monitor intervals pass, then rq's heartbeat pushes the job's expiry forward, and the row's
    # heartbeat moves too
    wait_until(lambda: redis.zrange("rq:wip:default", 0, -1, withscores=True)[0][1] > expiry, timeout=30)
    wait_until(lambda: local_row(tmp_path, "long-one")["heartbeat_at"] > first["heartbeat_at"], timeout=30)
    # And the worker's parent delivered the started callback while the job was still running
    webhook_receiver.wait_for(lambda e: e.type == "job.started", timeout=30)
    assert local_row(tmp_path, "long-one")["status"] == "running"
    file_server.release("long-one")
    wait_status(tmp_path, "long-one", "completed", worker=worker)


def test_cancel_of_a_queued_job_reports_canceled_without_running_it(
    daemon_env, file_server, start_worker, tmp_path, webhook_receiver
):
    # Given a queued job and no worker
    enqueue(daemon_env, slow_spec(file_server, "cancel-queued", 0.1, callback_url=webhook_receiver.url))
    # When it is canceled
    done = daemon_cli(daemon_env, "cancel", "cancel-queued")
    assert json.loads(done.stdout)["result"] == "canceled"
    assert local_row(tmp_path, "cancel-queued")["status"] == "canceled"
    # Then a worker never runs it, and its drainer delivers the canceled callback
    worker = start_worker(daemon_env)
    webhook_receiver.wait_for(lambda e: e.type == "job.canceled", timeout=30)
    # (a job queued after it runs, and is the only one that ever started: the queue is served in order)
    enqueue(daemon_env, slow_spec(file_server, "after-cancel-queued", 0.1))
    wait_status(tmp_path, "after-cancel-queued", "completed", worker=worker)
    assert worker.logs().count("attempt started") == 1


def test_cancel_of_a_queued_job_deletes_the_checkpoints_it_waited_to_resume_from(
    daemon_env, file_server, tmp_path
):
    # Given a queued job that an earlier attempt checkpointed (preempted, waiting to resume)
    enqueue(daemon_env, slow_spec(file_server, "cancel-resumable", 0.1))
    runtime = Runtime(load_settings(daemon_env))
    runtime.ledger.begin_attempt("cancel-resumable", rq_id="cancel-resumable", worker="earlier")
    stage = tmp_path / "images.tar"
    stage.write_bytes(b"a finished stage")
    earlier = runtime.checkpoints("cancel-resumable", 1)
    earlier.add("images.tar", stage)
    earlier.commit({"images": {"count": 1}})
    assert runtime.checkpoints("cancel-resumable", 2).manifests()
    # When it is canceled
    done = daemon_cli(daemon_env, "cancel", "cancel-resumable")
    assert json.loads(done.stdout)["result"] == "canceled"
    # Then its checkpoints are gone with it
    assert runtime.checkpoints("cancel-resumable", 2).manifests() == []


def test_a_job_naming_another_callable_is_refused_before_import(
    daemon_env, file_server, start_worker, tmp_path
):
    # Given forged jobs written straight to Redis, naming callables other than our entry point
    redis = Redis.from_url(daemon_env["REDIS_URL"])
    marker = tmp_path / "pwned"
    push_raw_job(redis, "forged-1", ["os.system", None, [f"touch {marker}"], {}])
    # (a real module of ours whose import writes a marker: see tests/forged_payload.py)
    payload_marker = tmp_path / "payload-imported"
    push_raw_job(redis, "forged-2", ["tests.forged_payload.payload", None, [], {}])
    enqueue(daemon_env, slow_spec(file_server, "honest", 0.1))
    # When a worker takes them
    worker = start_worker({**daemon_env, "FORGED_PAYLOAD_MARKER": str(payload_marker)})
    # Then the forged jobs fail without running or importing anything, and the honest one completes
    wait_status(tmp_path, "honest", "completed", worker=worker)
    assert not marker.exists()
    assert not payload_marker.exists()
    assert "job forged-1 names 'os.system'; this worker only runs daemon.entry.run_job" in worker.logs()
    assert "job forged-2 names 'tests.forged_payload.payload'; this worker only runs" in worker.logs()
    assert redis.hget("rq:job:forged-1", "status") == b"failed"
    assert redis.hget("rq:job:forged-2", "status") == b"failed"


def test_a_bad_spec_fails_with_a_specific_error_in_row_log_and_callback(
    daemon_env, file_server, start_worker, tmp_path, webhook_receiver, sentry_ingest
):
    # Given a spec that skipped validation (written to Redis directly) with an unknown field
    redis = Redis.from_url(daemon_env["REDIS_URL"])
    spec = {
        "spec_version": 1,
        "job_id": "bad-spec",
        "kind": "inspect",
        "params": {},
        "inputs": [{"url": file_server.add("x.jpg", sample_jpeg(1)), "nmae": "x.jpg"}],
        "callback_url": webhook_receiver.url,
    }
    push_raw_job(redis, "bad-spec", ["daemon.entry.run_job", None, [spec], {}])
    # And an input that is not an image at all, behind a valid spec
    enqueue(
        daemon_env,
        {
            "spec_version": 1,
            "job_id": "not-image",
            "kind": "inspect",
            "params": {},
            "inputs": [{"url": file_server.add("notes.jpg", b"\xff\xd8\xff" + b"garbage" * 10)}],
            "callback_url": webhook_receiver.url,
        },
    )
    # When the worker takes them (reporting to Sentry)
    worker = start_worker({**daemon_env, "SENTRY_DSN": sentry_ingest.dsn})
    # Then each fails with its own code, in the row, the log and the failure callback
    row = wait_status(tmp_path, "bad-spec", "failed", worker=worker)
    assert row["error_code"] == "unknown_field" and "inputs[0].nmae" in row["error_message"]
    failed = webhook_receiver.wait_for(
        lambda e: e.type == "job.failed" and e.json["data"]["job_id"] == "bad-spec"
    )
    assert failed.json["data"]["error"]["code"] == "unknown_field"
    row = wait_status(tmp_path, "not-image", "failed", worker=worker)
    assert row["error_code"] == "corrupt_image" and "not a readable image" in row["error_message"]
    assert "unknown_field" in worker.logs() and "corrupt_image" in worker.logs()
    assert worker.proc.poll() is None
    # And Sentry's rq integration reported the failures from the job process
    event = sentry_ingest.wait_for(lambda e: "corrupt_image" in sentry_ingest.describe(e))
    assert "JobFailed" in sentry_ingest.describe(event)


def test_a_retryable_failure_is_retried_with_backoff_until_attempts_run_out(
    daemon_env, file_server, start_worker, tmp_path, webhook_receiver
):
    # Given one input whose server fails once, and another whose server never recovers
    file_server.add("flaky-once.jpg", sample_jpeg(2))
    file_server.add("flaky-always.jpg", sample_jpeg(3))

    def spec(job_id: str, url: str) -> dict:
        return {
            "spec_version": 1,
            "job_id": job_id,
            "kind": "inspect",
            "params": {},
            "inputs": [{"url": url}],
            "callback_url": webhook_receiver.url,
        }

    enqueue(daemon_env, spec("recovers", file_server.flaky_url("flaky-once.jpg", 1)))
    enqueue(daemon_env, spec("gives-up", file_server.flaky_url("flaky-always.jpg", 99)))
    # When a worker runs them (JOB_MAX_ATTEMPTS=3, backoff 1 s doubling)
    worker = start_worker(daemon_env)
    # Then the first completes on its second attempt, after a requeued row and callback
    row = wait_status(tmp_path, "recovers", "completed", worker=worker)
    assert row["attempt"] == 2
    requeued = webhook_receiver.wait_for(
        lambda e: e.type == "job.requeued" and e.json["data"]["job_id"] == "recovers"
    )
    assert requeued.json["data"]["error"]["code"] == "download_http_error"
    # And the second fails for good after three attempts, with the download's own error code
    row = wait_status(tmp_path, "gives-up", "failed", worker=worker)
    assert (row["attempt"], row["error_code"]) == (3, "download_http_error")
    webhook_receiver.wait_for(lambda e: e.type == "job.failed" and e.json["data"]["job_id"] == "gives-up")


def test_cancel_kills_a_job_stuck_in_native_code_and_still_reports_canceled(
    daemon_env, file_server, start_worker, tmp_path, webhook_receiver
):
    # Given a running job that cannot act on signals (stopped, as if stuck inside a C call)
    enqueue(daemon_env, slow_spec(file_server, "stuck", 30, callback_url=webhook_receiver.url))
    worker = start_worker(daemon_env)
    pid = wait_until(lambda: horse_pid(worker), timeout=30)
    wait_status(tmp_path, "stuck", "running", worker=worker)
    import os
    import signal

    os.kill(pid, signal.SIGSTOP)
    # When the operator cancels it with a short grace
    done = daemon_cli(daemon_env, "cancel", "stuck", "--wait", "2")
    # Then its work-horse is killed through rq's stop-job command, and the cancel is reported anyway
    assert json.loads(done.stdout)["result"] == "killed", done.stderr
    wait_until(lambda: horse_pid(worker) is None, timeout=20, message=lambda: worker.logs()[-3000:])
    assert wait_status(tmp_path, "stuck", "canceled")["error_code"] == "canceled"
    webhook_receiver.wait_for(lambda e: e.type == "job.canceled", timeout=30)
    # And it is not retried; the worker takes the next job
    enqueue(daemon_env, slow_spec(file_server, "after-stuck", 0.1))
    wait_status(tmp_path, "after-stuck", "completed", worker=worker)
    assert Redis.from_url(daemon_env["REDIS_URL"]).hget("rq:job:stuck", "status") == b"stopped"
