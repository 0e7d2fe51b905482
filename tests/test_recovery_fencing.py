"""Fencing: an attempt that a newer attempt has replaced (its instance was presumed dead and came back)
stops at its next write and leaves no trace: no outputs, no row change, no callback. And a job whose
instances keep vanishing fails once its preemption budget is spent, not before."""

from __future__ import annotations

import json

import pytest
from redis import Redis

from tests.fixtures_daemon import wait_until
from tests.test_worker_faults import enqueue, held_spec, horse_pid, local_row, slow_spec, wait_status

pytestmark = pytest.mark.slow


def test_a_superseded_attempt_writes_no_output_row_or_callback(
    daemon_env, file_server, start_worker, tmp_path, webhook_receiver
):
    # Given an attempt busy downloading an input (held until the test lets it go)
    enqueue(daemon_env, held_spec(file_server, "fenced", callback_url=webhook_receiver.url))
    worker = start_worker(daemon_env)
    wait_status(tmp_path, "fenced", "running", worker=worker)
    file_server.wait_held("fenced")
    webhook_receiver.wait_for(lambda e: e.type == "job.progress", timeout=30)  # the 25 % milestone
    # When the ledger moves on to attempt 2 (another worker took the job over meanwhile)
    redis = Redis.from_url(daemon_env["REDIS_URL"])
    assert redis.hincrby("daemon:job:fenced", "attempt", 1) == 2
    sent_before = len(webhook_receiver.events)
    file_server.release("fenced")
    # Then attempt 1 stops at its first output instead of writing it
    wait_until(lambda: "superseded by a newer attempt" in worker.logs(), timeout=30,
               message=lambda: worker.logs()[-3000:])  # fmt: skip
    assert not (tmp_path / "outputs" / "fenced").exists()
    row = local_row(tmp_path, "fenced")
    assert row["status"] == "running" and row["attempt"] == 1  # untouched since
    # And the worker serves on: the next job's callbacks arrive, and none from the stale attempt came
    # before them (the attempt had ended: the worker dequeues one job at a time)
    enqueue(daemon_env, slow_spec(file_server, "after-fenced", 0.1, callback_url=webhook_receiver.url))
    webhook_receiver.wait_for(
        lambda e: e.type == "job.completed" and e.json["data"]["job_id"] == "after-fenced", timeout=60
    )
    assert [e for e in webhook_receiver.events[sent_before:] if e.json["data"]["job_id"] == "fenced"] == []
    # (and the outbox empties: nothing of the stale attempt waits there to be sent)
    wait_until(lambda: Redis.from_url(daemon_env["REDIS_URL"]).zcard("daemon:outbox:due") == 0, timeout=30)


def test_preemptions_have_their_own_budget(daemon_env, file_server, start_worker, tmp_path):
    # Given a budget of 2 preemptions and a job stopped three times by SIGTERM
    env = {**daemon_env, "JOB_MAX_PREEMPTIONS": "2", "JOB_MAX_ATTEMPTS": "1"}
    enqueue(env, held_spec(file_server, "hunted", attempts=3))
    for round_ in range(3):
        worker = start_worker(env, name=f"w{round_}")
        wait_until(lambda w=worker: horse_pid(w), timeout=30)
        wait_status(tmp_path, "hunted", "running", worker=worker)
        file_server.wait_held("hunted", round_ + 1)
        worker.signal(15)
        assert worker.wait(timeout=30) == 0
    # Then the first two were requeued (JOB_MAX_ATTEMPTS=1 was not used up by them), the third failed
    row = local_row(tmp_path, "hunted")
    assert row["status"] == "failed" and row["error_code"] == "too_many_preemptions", json.dumps(row)
    assert row["attempt"] == 3
    file_server.release("hunted")
