"""Spot recovery end to end: a splat job interrupted mid-training on one worker resumes on another from
its S3 checkpoint and ends with the same PLY, byte for byte, as the same job run without interruption.

Real parts: Redis, Supabase (PostgreSQL + our PostgREST layer), moto's S3 server, the fake EC2
metadata service (IMDSv2) the first worker polls, and `python -m daemon worker` processes. SfM runs
on one thread (SFM_THREADS=1, set by `daemon_env`) so that the reference run's SfM is the same.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys

import pytest
from redis import Redis

from tests import scenes
from tests.fixtures_daemon import ROOT, wait_until
from tests.fixtures_daemon import enqueue_cli as enqueue
from tests.test_worker_faults import horse_pid

pytestmark = pytest.mark.slow

PARAMS = {"iterations": 100, "holdout_every": 4, "max_image_size": 256}


@pytest.fixture(scope="module")
def ring_inputs(file_server, tmp_path_factory) -> list[dict[str, str]]:
    scene = scenes.render_textured_scene(tmp_path_factory.mktemp("resume-ring"), count=16, seed=0)
    return [
        {"url": file_server.add(f"resume-ring-{p.name}", p.read_bytes()), "name": p.name} for p in scene.paths
    ]


@pytest.fixture(scope="module")
def reference_ply(ring_inputs, tmp_path_factory) -> bytes:
    """The PLY of the job run straight through, in one process (`run-local`, no checkpoints)."""
    base = tmp_path_factory.mktemp("reference")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "S3_", "SENTRY_"))},
        "DAEMON_ENV_FILE": str(base / "no.env"),
        "DAEMON_WORK_DIR": str(base / "work"),
        "DAEMON_STATE_DIR": str(base / "state"),
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "URL_ALLOW_NETWORKS": "127.0.0.1/32",
        "SFM_THREADS": "1",
        "IMDS_URL": "",
    }
    spec = {"spec_version": 1, "job_id": "resume-reference", "kind": "splat", "inputs": ring_inputs,
            "params": PARAMS}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "run-local", json.dumps(spec), "--out", str(base / "out")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert json.loads(done.stdout)["status"] == "completed", done.stderr[-3000:]
    return (base / "out" / "resume-reference" / "splat.ply").read_bytes()


def test_spot_notice_mid_training_resumes_elsewhere_to_the_identical_result(
    full_env, ring_inputs, reference_ply, start_worker, jobs_rows, s3_bucket, imds, webhook_receiver
):
    server, bucket = s3_bucket
    s3 = server.client()
    job_id = "resume-notice-1"
    spec = {"spec_version": 1, "job_id": job_id, "kind": "splat", "inputs": ring_inputs, "params": PARAMS,
            "callback_url": f"{webhook_receiver.url}/hooks/resume"}  # fmt: skip
    enqueue(full_env, spec)
    # Given a worker on a spot instance, its job a third of the way into training
    first = start_worker({**full_env, "IMDS_URL": imds.url, "SPOT_POLL_INTERVAL_S": "0.2"}, name="spot")
    wait_until(
        lambda: any(r["stage"] == "train" and r["progress"] >= 45 for r in jobs_rows(id=job_id)),
        timeout=300,
        interval=0.5,
        message=lambda: first.logs()[-4000:],
    )
    # When the instance gets its two-minute notice
    imds.trigger_interruption("terminate", in_seconds=120)
    # Then the worker checkpoints, requeues the job and exits well before the deadline
    assert first.wait(timeout=60) == 0, first.logs()[-4000:]
    logs = first.logs()
    assert "spot interruption notice: terminate" in logs and "training checkpoint at step" in logs
    row = jobs_rows(id=job_id)[0]
    assert row["status"] == "requeued" and row["error_code"] == "preempted" and row["attempt"] == 1
    assert row["error_message"].startswith("spot interruption notice (terminate at ")
    manifests = s3.list_objects_v2(Bucket=bucket, Prefix=f"checkpoints/{job_id}/manifests/")
    assert manifests.get("KeyCount", 0) >= 1

    # When another worker (another instance, no notice) takes the job
    second = start_worker(full_env, name="replacement")
    done = wait_until(
        lambda: next((r for r in jobs_rows(id=job_id) if r["status"] == "completed"), None),
        timeout=300,
        interval=1.0,
        message=lambda: second.logs()[-4000:],
    )
    # Then it resumed: the earlier stages were restored, not redone, and training went on from its step
    resumed = second.logs()
    assert "restored stages download, images, sfm" in resumed
    assert "training resumes at step" in resumed and "sfm: registered" not in resumed
    assert done["attempt"] == 2
    # And the result is the uninterrupted run's, byte for byte
    ply = s3.get_object(Bucket=bucket, Key=f"jobs/{job_id}/splat.ply")["Body"].read()
    assert ply == reference_ply
    # And one completed callback, after the requeued one; the checkpoints are gone
    webhook_receiver.wait_for(lambda e: e.type == "job.completed", timeout=30)
    types = [e.type for e in webhook_receiver.events]
    assert types.count("job.completed") == 1 and types.index("job.requeued") < types.index("job.completed")
    leftovers = s3.list_objects_v2(Bucket=bucket, Prefix=f"checkpoints/{job_id}/")
    assert leftovers.get("KeyCount", 0) == 0


def test_sigkill_mid_training_resumes_from_the_periodic_checkpoint(
    full_env, ring_inputs, reference_ply, start_worker, jobs_rows, s3_bucket, sentry_ingest
):
    server, bucket = s3_bucket
    job_id = "resume-kill-1"
    enqueue(full_env, {"spec_version": 1, "job_id": job_id, "kind": "splat", "inputs": ring_inputs,
                       "params": PARAMS})  # fmt: skip
    # Given a worker checkpointing every 2 s, well into training, with a checkpoint written
    first = start_worker({**full_env, "CHECKPOINT_INTERVAL_S": "2"}, name="doomed")
    wait_until(
        lambda: (
            "training checkpoint at step" in first.logs()
            and any(r["progress"] >= 45 for r in jobs_rows(id=job_id))
        ),
        timeout=300,
        interval=0.5,
        message=lambda: first.logs()[-4000:],
    )
    # When the instance vanishes: worker and job killed, nothing reported
    horse = wait_until(lambda: horse_pid(first), timeout=5)
    first.proc.kill()
    os.kill(horse, signal.SIGKILL)
    last_step = max(int(s) for s in re.findall(r"training checkpoint at step (\d+)", first.logs()))
    # Then another worker finds it abandoned (once the dead worker's rq heartbeat has expired: about
    # 90 s, which scripts/bench_recovery.py measures) and resumes from the last checkpoint
    second = start_worker({**full_env, "SENTRY_DSN": sentry_ingest.dsn}, name="survivor")
    wait_until(lambda: "training resumes at step" in second.logs(), timeout=400, interval=0.5,
               message=lambda: second.logs()[-4000:])  # fmt: skip
    resumed_at = int(re.search(r"training resumes at step (\d+)", second.logs()).group(1))
    # At most one checkpoint interval was lost: it resumes at the last checkpoint the log shows, or at
    # a later one that was committed when the kill came before its log line.
    assert 0 < last_step <= resumed_at
    done = wait_until(
        lambda: next((r for r in jobs_rows(id=job_id) if r["status"] == "completed"), None),
        timeout=300,
        interval=1.0,
        message=lambda: second.logs()[-4000:],
    )
    assert done["attempt"] == 2
    # And the result is the uninterrupted run's, byte for byte
    ply = server.client().get_object(Bucket=bucket, Key=f"jobs/{job_id}/splat.ply")["Body"].read()
    assert ply == reference_ply
    # And Sentry heard of the abandoned job, which rq's integration alone never would
    event = sentry_ingest.wait_for(lambda e: "abandoned" in (e.get("message") or ""))
    assert event["tags"]["rq_job_id"] == job_id


def test_notice_during_sfm_redoes_sfm_cleanly_but_not_the_photos(
    full_env, ring_inputs, start_worker, jobs_rows, imds
):
    job_id = "resume-sfm-1"
    params = PARAMS
    enqueue(full_env, {"spec_version": 1, "job_id": job_id, "kind": "splat", "inputs": ring_inputs,
                       "params": params})  # fmt: skip
    # Given a spot worker that has just begun SfM (its start, not a point inside it: the notice's
    # handling, a fraction of a second, must come before SfM's end however loaded the machine, and SfM
    # on 16 photos on one thread takes seconds)
    first = start_worker({**full_env, "IMDS_URL": imds.url, "SPOT_POLL_INTERVAL_S": "0.1"}, name="spot")
    sfm_began = re.compile(r"stage=sfm \S+: stage started")
    wait_until(lambda: sfm_began.search(first.logs()), timeout=120, interval=0.1,
               message=lambda: first.logs()[-4000:])  # fmt: skip
    # When the notice comes
    imds.trigger_interruption("stop", in_seconds=120)
    assert first.wait(timeout=60) == 0, first.logs()[-4000:]
    assert "sfm: registered" not in first.logs()  # it was stopped mid-SfM
    assert jobs_rows(id=job_id)[0]["status"] == "requeued", (jobs_rows(id=job_id)[0], first.logs()[-3000:])
    # Then the next worker restores the photos, redoes SfM from scratch, and completes
    second = start_worker(full_env, name="next")
    wait_until(
        lambda: any(r["status"] == "completed" for r in jobs_rows(id=job_id)),
        timeout=300,
        interval=1.0,
        message=lambda: second.logs()[-4000:],
    )
    logs = second.logs()
    assert "restored stages download, images from attempt 1" in logs
    assert "sfm: registered" in logs  # SfM ran again, in full
    assert "download finished in an earlier run" in logs and "images finished in an earlier run" in logs


def worker_heartbeat(redis: Redis) -> bytes:
    """The one live worker's last heartbeat, as rq records it."""
    (key,) = redis.smembers("rq:workers")
    return redis.hget(key, "last_heartbeat") or b""


KILLS = ("SIGKILL", "SIGTERM", "SIGTERM")
"""The chaos test's kills, in order: an instance that vanishes (found abandoned later) and two notices."""


def test_chaos_every_job_completes_exactly_once_with_the_reference_result(
    full_env, ring_inputs, reference_ply, start_worker, jobs_rows, s3_bucket, webhook_receiver
):
    server, bucket = s3_bucket
    env = {**full_env, "CHECKPOINT_INTERVAL_S": "3", "JOB_MAX_PREEMPTIONS": "50"}
    job_ids = [f"chaos-{i}" for i in range(3)]
    for job_id in job_ids:
        hook = f"{webhook_receiver.url}/hooks/{job_id}"
        enqueue(env, {"spec_version": 1, "job_id": job_id, "kind": "splat", "inputs": ring_inputs,
                      "params": PARAMS, "callback_url": hook})  # fmt: skip
    # Given a pool of three workers
    pool = [start_worker(env, name=f"pool{i}") for i in range(3)]
    rng = random.Random(20261125)
    done_kills: list[str] = []

    def completed() -> set[str]:
        return {r["id"] for r in jobs_rows() if r["status"] == "completed"}

    def just_checkpointed() -> list:
        """Busy workers whose job wrote a training checkpoint: killing one now loses work to resume."""
        return [w for w in pool if w.proc.poll() is None and horse_pid(w)
                and "training checkpoint at step" in w.logs()]  # fmt: skip

    # When, each time a job has a checkpoint to resume from, its worker is killed (the kills' order
    # fixed, the victim chosen at random), with a fresh worker started in its place
    for how in KILLS:
        busy = wait_until(just_checkpointed, timeout=600, interval=0.2,
                          message=lambda: f"kills {done_kills}; completed {completed()}")  # fmt: skip
        victim = rng.choice(busy)
        if how == "SIGKILL":  # the instance vanished: worker and job gone, nothing reported
            horse = horse_pid(victim)
            victim.proc.kill()
            if horse:
                os.kill(horse, signal.SIGKILL)
        else:  # a notice or a scale-in: checkpoint and requeue
            victim.signal(signal.SIGTERM)
            assert victim.wait(timeout=60) == 0, victim.logs()[-4000:]
        done_kills.append(how)
        pool[pool.index(victim)] = start_worker(env, name=f"pool-r{len(done_kills)}")
    # Then every job completes, exactly once, with the uninterrupted run's PLY
    wait_until(
        lambda: len(completed()) == len(job_ids),
        timeout=600,
        interval=2.0,
        message=lambda: f"rows: {[(r['id'], r['status'], r['attempt']) for r in jobs_rows()]}",
    )
    # (stopping the pool, once its outbox is empty, leaves nothing that could still send a duplicate)
    redis = Redis.from_url(env["REDIS_URL"])
    wait_until(lambda: redis.zcard("daemon:outbox:due") == 0, timeout=60)
    for worker in pool:
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    rows = {r["id"]: r for r in jobs_rows()}
    completions = [e.path for e in webhook_receiver.events if e.type == "job.completed"]
    for job_id in job_ids:
        assert completions.count(f"/hooks/{job_id}") == 1, completions
        ply = server.client().get_object(Bucket=bucket, Key=f"jobs/{job_id}/splat.ply")["Body"].read()
        assert ply == reference_ply, job_id
    # And the chaos happened: every kill landed on a running job, which took more than one attempt
    attempts = {job_id: rows[job_id]["attempt"] for job_id in job_ids}
    print(f"\nchaos: kills {done_kills}; attempts per job {attempts}; completed callbacks {len(completions)}")
    assert done_kills == list(KILLS)
    assert sum(attempts.values()) >= len(job_ids) + 2  # the two requeues at least; the lost one too


def test_rebalance_recommendation_checkpoints_and_finishes_but_takes_no_new_job(
    full_env, ring_inputs, start_worker, jobs_rows, imds
):
    params = PARAMS
    for job_id in ("rebalance-1", "rebalance-2"):
        enqueue(full_env, {"spec_version": 1, "job_id": job_id, "kind": "splat", "inputs": ring_inputs,
                           "params": params})  # fmt: skip
    # Given a spot worker training its first job (the second waits in the queue)
    worker = start_worker({**full_env, "IMDS_URL": imds.url, "SPOT_POLL_INTERVAL_S": "0.2"}, name="spot")
    wait_until(lambda: any(r["stage"] == "train" for r in jobs_rows(id="rebalance-1")), timeout=300,
               interval=0.5, message=lambda: worker.logs()[-4000:])  # fmt: skip
    # When AWS recommends rebalancing (an earlier, softer signal than the interruption notice)
    imds.trigger_rebalance()
    # Then the running job writes a checkpoint at once and goes on to complete on this worker
    wait_until(lambda: "training checkpoint at step" in worker.logs(), timeout=30,
               message=lambda: worker.logs()[-4000:])  # fmt: skip
    done = wait_until(
        lambda: next((r for r in jobs_rows(id="rebalance-1") if r["status"] == "completed"), None),
        timeout=300,
        interval=1.0,
        message=lambda: worker.logs()[-4000:],
    )
    assert done["attempt"] == 1
    # And the worker stays up but takes no new job, while it goes on beating (two heartbeats, counted)
    wait_until(lambda: "taking no new jobs: spot rebalance recommendation" in worker.logs(), timeout=30)
    redis = Redis.from_url(full_env["REDIS_URL"])
    for _ in range(2):
        beat = worker_heartbeat(redis)
        wait_until(lambda b=beat: worker_heartbeat(redis) > b, timeout=60, message=worker.logs)
    assert worker.proc.poll() is None
    assert not jobs_rows(id="rebalance-2")  # never started: no row written
    assert redis.lrange("rq:queue:default", 0, -1) == [b"rebalance-2"]
