"""The ledger (`python -m daemon status`) says `requeued` whichever path requeued the job: the runner's
retry after a failure, and the worker parent's retry of a killed work-horse, not only a preemption.
Both used to leave the ledger at `running` until the next attempt began. And a job that fails for good
keeps its checkpoints when a retry by hand could still use them, and only then."""

from __future__ import annotations

import json
import os
import signal

import pytest
from redis import Redis
from rq.job import JobStatus

from daemon.adapters.ledger import Ledger
from daemon.adapters.runtime import Runtime
from daemon.attempt.policy import Budgets, Ending, settle
from daemon.config import load_settings
from daemon.worker.queue import make_queue
from daemon.worker.rq_worker import DaemonWorker
from tests.fixtures_daemon import sample_jpeg, wait_until
from tests.test_worker_faults import enqueue, held_spec, horse_pid, wait_status
from tests.test_worker_lifecycle import daemon_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def env(daemon_env):
    """A retry far in the future: the requeued state lasts for the whole test."""
    return {**daemon_env, "JOB_RETRY_BACKOFF_S": "600"}


def wait_ledger_status(env, job_id: str, status: str, worker) -> None:
    ledger = Ledger(Redis.from_url(env["REDIS_URL"]))
    wait_until(
        lambda: ledger.get(job_id).status == status,
        timeout=60,
        message=lambda: f"ledger: {ledger.get(job_id)}\n{worker.logs()[-4000:]}",
    )


def test_a_retryable_failure_shows_requeued_in_the_ledger(env, file_server, start_worker):
    # Given an inspect job whose only input answers 503 (retryable)
    file_server.add("policy-503.jpg", sample_jpeg(4))
    url = file_server.flaky_url("policy-503.jpg", 99)
    enqueue(env, {"spec_version": 1, "job_id": "policy-503", "kind": "inspect", "params": {},
                  "inputs": [{"url": url}]})  # fmt: skip
    # When its first attempt fails and is retried after the backoff
    worker = start_worker(env)
    wait_ledger_status(env, "policy-503", "requeued", worker)
    # Then `python -m daemon status` shows the ledger and the row agreeing: requeued after attempt 1
    shown = json.loads(daemon_cli(env, "status", "policy-503").stdout)
    assert shown["ledger"]["status"] == "requeued" and shown["ledger"]["failures"] == 1
    assert (shown["row"]["status"], shown["row"]["error_code"]) == ("requeued", "download_http_error")


def test_a_killed_work_horse_shows_requeued_in_the_ledger(env, file_server, start_worker, tmp_path):
    # Given a running job under a live worker
    enqueue(env, held_spec(file_server, "policy-killed"))
    worker = start_worker(env)
    pid = wait_until(lambda: horse_pid(worker), timeout=30)
    wait_status(tmp_path, "policy-killed", "running", worker=worker)
    file_server.wait_held("policy-killed")
    # When its work-horse is killed, as the out-of-memory killer would
    os.kill(pid, signal.SIGKILL)
    # Then the parent's retry shows in the ledger as it does in the row: requeued, one failure counted
    wait_ledger_status(env, "policy-killed", "requeued", worker)
    entry = Ledger(Redis.from_url(env["REDIS_URL"])).get("policy-killed")
    assert (entry.failures, entry.preemptions) == (1, 0)
    row = wait_status(tmp_path, "policy-killed", "requeued", worker=worker)
    assert row["error_code"] == "worker_lost"
    assert worker.proc.poll() is None
    file_server.release("policy-killed")


def checkpointed_earlier(env, job_id: str, tmp_path) -> Runtime:
    """A job an earlier attempt checkpointed (its first stage), as a preempted one would have."""
    runtime = Runtime(load_settings(env))
    runtime.ledger.begin_attempt(job_id, rq_id=job_id, worker="earlier")
    stage = tmp_path / f"{job_id}-images.tar"
    stage.write_bytes(b"a finished stage")
    earlier = runtime.checkpoints(job_id, 1)
    earlier.add("images.tar", stage)
    earlier.commit({"images": {"count": 1}})
    return runtime


@pytest.mark.parametrize(
    ("case", "fail_times", "status", "code", "kept"),
    [
        # the input answers 503 (retryable) and JOB_MAX_ATTEMPTS=1 is spent: a retry by hand could work
        ("out-of-attempts", 99, 503, "download_http_error", True),
        # the input does not exist (404): nothing a retry could fix
        ("refused-input", 0, 404, "input_not_found", False),
    ],
)
def test_a_failed_job_keeps_its_checkpoints_only_if_a_retry_could_use_them(
    daemon_env, file_server, start_worker, tmp_path, case, fail_times, status, code, kept
):
    # Given a job with checkpoints from an earlier attempt, and an input that fails this way
    env = {**daemon_env, "JOB_MAX_ATTEMPTS": "1"}
    job_id = f"policy-keep-{case}"
    runtime = checkpointed_earlier(env, job_id, tmp_path)
    if status == 503:
        file_server.add(f"{job_id}.jpg", sample_jpeg(4))
        url = file_server.flaky_url(f"{job_id}.jpg", fail_times)
    else:
        url = f"{file_server.base_url}/{job_id}-missing.jpg"
    enqueue(env, {"spec_version": 1, "job_id": job_id, "kind": "inspect", "params": {},
                  "inputs": [{"url": url}]})  # fmt: skip
    # When it fails for good
    worker = start_worker(env)
    row = wait_status(tmp_path, job_id, "failed", worker=worker)
    assert row["error_code"] == code
    # Then its checkpoints are kept (out of attempts) or gone (a refused input)
    assert bool(runtime.checkpoints(job_id, 3).manifests()) is kept


@pytest.mark.parametrize("rq_acted", [True, False], ids=["rq-requeued-it", "before-rq-acted"])
def test_a_horse_killed_after_ending_its_own_attempt_is_counted_and_queued_once(daemon_env, rq_acted):
    # Given a job whose horse ended attempt 1 itself (a preemption: requeue at the front) and was then
    # killed before it exited: after rq had put the job back on the queue, or before
    redis = Redis.from_url(daemon_env["REDIS_URL"])
    worker = DaemonWorker(load_settings(daemon_env))
    enqueue(daemon_env, {"spec_version": 1, "job_id": "ended-twice", "kind": "inspect",
                         "inputs": [{"url": "http://127.0.0.1:9/a.jpg"}]})  # fmt: skip
    queue = make_queue("default", redis)
    job = queue.fetch_job("ended-twice")
    assert job is not None and redis.lpop("rq:queue:default") == b"ended-twice"  # a worker took it
    job.set_status(JobStatus.STARTED)
    ledger = worker.runtime.ledger
    attempt = ledger.begin_attempt("ended-twice", rq_id=job.id, worker=worker.name)
    settle(ledger, "ended-twice", attempt, Ending.preempted("SIGTERM"), Budgets.of(worker.settings))
    if rq_acted:  # rq's handling of the horse's Retry: back at the front of its queue
        redis.lpush("rq:queue:default", "ended-twice")
        job.set_status(JobStatus.QUEUED)

    # When the parent finds the horse killed and does what rq's monitor does then
    killed = 9  # waitpid status of a process killed by SIGKILL
    worker.on_horse_killed(job, 1234, killed, None)
    worker.handle_job_failure(job, queue=queue, exc_string="Work-horse terminated unexpectedly")

    # Then the preemption is counted once, no failure is, and the job is on its queue once, queued
    entry = ledger.get("ended-twice")
    assert (entry.preemptions, entry.failures, entry.status) == (1, 0, "requeued")
    assert queue.job_ids == ["ended-twice"]
    assert job.get_status() == JobStatus.QUEUED
