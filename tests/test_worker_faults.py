"""Faults while a job runs: the job process killed, the worker stopped (gracefully and by force), Redis
restarted, Supabase answering 503, the callback receiver failing. In each case nothing is lost: the
job ends in the state it should, the row says so, the callback arrives, the daemon keeps serving."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

from tests.fixtures_daemon import enqueue_cli as enqueue
from tests.fixtures_daemon import sample_jpeg, wait_until

pytestmark = pytest.mark.slow


def slow_spec(file_server, job_id: str, seconds: float, **extra) -> dict:
    """An inspect job whose second input drips over `seconds`."""
    url = file_server.slow_url(f"{job_id}-slow.jpg", seconds)
    return _two_input_spec(file_server, job_id, f"{job_id}-slow.jpg", url, **extra)


def held_spec(file_server, job_id: str, *, attempts: int = 1, **extra) -> dict:
    """An inspect job whose first `attempts` attempts stay in their download until
    `file_server.release(job_id)` (later ones download at once): running for as long as the test needs,
    on any machine."""
    return _two_input_spec(file_server, job_id, job_id, file_server.held_url(job_id, attempts), **extra)


def _two_input_spec(file_server, job_id: str, second_name: str, second_url: str, **extra) -> dict:
    file_server.add(second_name, sample_jpeg(7, size=(160, 120)))
    quick = file_server.add(f"{job_id}-quick.jpg", sample_jpeg(3))
    return {
        "spec_version": 1,
        "job_id": job_id,
        "kind": "inspect",
        "params": {},
        "inputs": [{"url": quick, "name": "a.jpg"}, {"url": second_url, "name": "b.jpg"}],
        **extra,
    }


def horse_pid(worker) -> int | None:
    """The work-horse is the worker's child that leads its own process group (rq calls setpgrp)."""
    for child in psutil.Process(worker.proc.pid).children():
        try:
            if os.getpgid(child.pid) == child.pid:
                return child.pid
        except ProcessLookupError:
            continue
    return None


def local_row(tmp_path, job_id: str) -> dict | None:
    path = tmp_path / "state" / "jobs" / f"{job_id}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_status(tmp_path, job_id, status, timeout=60, worker=None):
    return wait_until(
        lambda: (r := local_row(tmp_path, job_id)) and r["status"] == status and r,
        timeout=timeout,
        message=lambda: f"row: {local_row(tmp_path, job_id)}\n" + (worker.logs()[-4000:] if worker else ""),
    )


def test_job_process_killed_with_sigkill_is_retried_and_completes(
    daemon_env, file_server, start_worker, tmp_path, webhook_receiver
):
    # Given a running job (its first attempt held in its download, so it is still running when killed)
    enqueue(daemon_env, held_spec(file_server, "kill-horse", callback_url=webhook_receiver.url))
    worker = start_worker(daemon_env)
    pid = wait_until(lambda: horse_pid(worker), timeout=30)
    wait_status(tmp_path, "kill-horse", "running")
    file_server.wait_held("kill-horse")
    # When its process is killed as the OOM killer would
    os.kill(pid, signal.SIGKILL)
    # Then the row says requeued with a specific error, and a later attempt completes
    requeued = webhook_receiver.wait_for(lambda e: e.type == "job.requeued", timeout=30)
    assert requeued.json["data"]["error"]["code"] == "worker_lost"
    assert "SIGKILL" in requeued.json["data"]["error"]["message"]
    row = wait_status(tmp_path, "kill-horse", "completed", worker=worker)
    assert row["attempt"] == 2
    assert worker.proc.poll() is None, "the daemon must survive its job being killed"
    webhook_receiver.wait_for(lambda e: e.type == "job.completed", timeout=30)
    file_server.release("kill-horse")  # the killed attempt's download, still held server-side


def test_sigterm_requeues_the_running_job_and_exits_cleanly(daemon_env, file_server, start_worker, tmp_path):
    # Given a running job (its first attempt held in its download)
    enqueue(daemon_env, held_spec(file_server, "graceful"))
    first = start_worker(daemon_env, name="first")
    wait_until(lambda: horse_pid(first), timeout=30)
    wait_status(tmp_path, "graceful", "running")
    file_server.wait_held("graceful")
    # When systemd sends SIGTERM
    first.signal(signal.SIGTERM)
    # Then the job is requeued (not run to the end: its input is held) and the worker exits 0
    assert first.wait(timeout=20) == 0
    row = local_row(tmp_path, "graceful")
    assert row["status"] == "requeued" and row["error_code"] == "preempted"
    assert "attempt preempted" in first.logs()
    # And another worker resumes it
    second = start_worker(daemon_env, name="second")
    row = wait_status(tmp_path, "graceful", "completed", worker=second)
    assert row["attempt"] == 2
    file_server.release("graceful")


def test_second_signal_forces_the_stop_and_still_requeues(daemon_env, file_server, start_worker, tmp_path):
    # Given a job that ignores the polite request (its preempt signal is blocked here by a worker stop
    # timeout long enough that only the second signal can end it)
    env = {**daemon_env, "DAEMON_STOP_TIMEOUT_S": "60"}
    enqueue(env, slow_spec(file_server, "forced", 30))
    worker = start_worker(env)
    pid = wait_until(lambda: horse_pid(worker), timeout=30)
    wait_status(tmp_path, "forced", "running")
    os.kill(pid, signal.SIGSTOP)  # a job stuck in native code: cannot act on the preempt signal
    # When the operator stops the daemon twice
    worker.signal(signal.SIGTERM)
    # (the second signal counts once the first one's handler has installed the forced-stop handler)
    wait_until(lambda: "stop requested: preempting the running job" in worker.logs(), timeout=30)
    worker.signal(signal.SIGTERM)
    # Then the worker exits promptly and the job is back on the queue
    worker.wait(timeout=20)
    row = wait_status(tmp_path, "forced", "requeued")
    assert row["error_code"] == "preempted"
    from redis import Redis

    redis = Redis.from_url(env["REDIS_URL"])
    assert b"forced" in redis.lrange("rq:queue:default", 0, -1)


def test_redis_restart_mid_job_does_not_lose_the_job(
    daemon_env, file_server, start_worker, tmp_path, redis_server, webhook_receiver
):
    # Given a running job (held in its download until Redis is back)
    enqueue(daemon_env, held_spec(file_server, "redis-blip", callback_url=webhook_receiver.url))
    worker = start_worker(daemon_env)
    wait_status(tmp_path, "redis-blip", "running", worker=worker)
    file_server.wait_held("redis-blip")
    # When Redis restarts under it
    redis_server.restart(down_for=1.0)
    file_server.release("redis-blip")
    # Then the job completes, the callback arrives, and the worker is still serving
    wait_status(tmp_path, "redis-blip", "completed", worker=worker)
    webhook_receiver.wait_for(lambda e: e.type == "job.completed", timeout=30)
    assert worker.proc.poll() is None
    enqueue(daemon_env, slow_spec(file_server, "after-blip", 0.1))
    wait_status(tmp_path, "after-blip", "completed", worker=worker)


def test_supabase_outage_never_fails_the_job_and_the_final_row_lands_later(
    daemon_env, supabase_env, supabase_server, jobs_rows, file_server, start_worker
):
    # Given Supabase answering 503 before and during the job
    env = {**daemon_env, **supabase_env}
    supabase_server.outage(status=503)
    enqueue(env, slow_spec(file_server, "pg-outage", 2))
    worker = start_worker(env)
    # When the job finishes during the outage
    wait_until(
        lambda: "attempt completed" in worker.logs(), timeout=60, message=lambda: worker.logs()[-3000:]
    )
    assert jobs_rows(id="pg-outage") == []
    assert any(r.status == 503 for r in supabase_server.requests)
    # Then once Supabase is back the final state is written
    supabase_server.clear_outage()
    row = wait_until(
        lambda: next((r for r in jobs_rows(id="pg-outage") if r["status"] == "completed"), None),
        timeout=60,
        message=lambda: worker.logs()[-3000:],
    )
    assert row["progress"] == 100 and row["outputs"]["manifest.json"]["size"] > 0


def test_callback_receiver_failing_then_recovering_gets_the_same_webhook_id(
    daemon_env, file_server, start_worker, tmp_path, webhook_receiver
):
    # Given a receiver that refuses the first two deliveries of the completion (a count, not a time
    # window: on a loaded machine the job may finish after any window has closed)
    webhook_receiver.fail_next(2, status=503, type="job.completed")
    enqueue(daemon_env, slow_spec(file_server, "cb-outage", 0.1, callback_url=webhook_receiver.url))
    worker = start_worker(daemon_env)
    # When the job completes while its completion callback is refused
    wait_status(tmp_path, "cb-outage", "completed", worker=worker)
    # Then the completion callback arrives once the receiver recovers, retried with one webhook id
    completed = webhook_receiver.wait_for(lambda e: e.type == "job.completed", timeout=60)
    tries = [a for a in webhook_receiver.attempts if a.type == "job.completed"]
    assert [a.status for a in tries[:2]] == [503, 503] and tries[-1].status == 204
    assert {a.webhook_id for a in tries} == {completed.webhook_id}
    assert local_row(tmp_path, "cb-outage")["status"] == "completed"  # the outage never changed the outcome
