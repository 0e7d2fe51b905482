"""Tenant isolation at the boundaries: which S3 keys a spec may name, who a job id belongs to, and the
producers' one atomic enqueue (Python and Node) against a real Redis."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from daemon.adapters.ledger import JobIdInUse, Ledger
from daemon.adapters.runtime import Runtime
from daemon.attempt.runner import JobFailed, JobRunner
from daemon.config import load_settings
from daemon.errors import SpecError
from daemon.handlers import parse_job
from daemon.spec.tenancy import Roots, confine, spec_digest
from daemon.worker.queue import enqueue, make_queue
from tests.fixtures_daemon import ROOT

OWNER_A = "0b5c7d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"
OWNER_B = "9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f"
NODE_PRODUCER = ROOT / "scripts" / "node" / "enqueue.mjs"


def spec(job_id: str = "scan-1", *, keys: tuple[str, ...] = ("uploads/a.jpg",), **extra: Any):
    raw = {
        "spec_version": 1,
        "job_id": job_id,
        "kind": "inspect",
        "inputs": [{"s3_key": key} for key in keys],
        **extra,
    }
    return parse_job(raw)


def roots(tmp_path: Path, **env: str) -> Roots:
    return Roots.of(load_settings({"DAEMON_ENV_FILE": str(tmp_path / "absent.env"), **env}))


# -- keys and prefixes a spec may name ---------------------------------------------------------------

PER_OWNER = {"S3_INPUT_PREFIXES": "uploads/{owner_id}/", "S3_OUTPUT_PREFIXES": "deliveries/{owner_id}/"}


@pytest.mark.parametrize(
    ("env", "extra", "code"),
    [
        # the default roots: uploads/ for inputs, S3_PREFIX (jobs/) for outputs
        ({}, {"keys": ("uploads/u1/a.jpg",)}, None),
        ({}, {"keys": ("uploads/a.jpg", "jobs/victim/model.ply")}, "s3_key_not_allowed"),
        ({}, {"keys": ("checkpoints/victim/attempt-3/manifest.json",)}, "s3_key_not_allowed"),
        ({}, {"keys": ("uploads",)}, "s3_key_not_allowed"),
        ({}, {"keys": ("uploads/",)}, "invalid_s3_key"),  # (a folder is no key: refused by the spec itself)
        ({}, {"output": {"s3_prefix": "jobs"}}, None),
        ({}, {"output": {"s3_prefix": "jobs/victim"}}, "s3_prefix_not_allowed"),
        ({}, {"output": {"s3_prefix": "checkpoints"}}, "s3_prefix_not_allowed"),
        ({}, {"output": {"s3_prefix": "uploads/u1"}}, "s3_prefix_not_allowed"),
        # per-owner roots: a customer's own folder, and nobody else's
        (PER_OWNER, {"keys": (f"uploads/{OWNER_A}/a.jpg",), "owner_id": OWNER_A}, None),
        (PER_OWNER, {"keys": (f"uploads/{OWNER_A}/a.jpg",), "owner_id": OWNER_A.upper()}, None),
        (PER_OWNER, {"keys": (f"uploads/{OWNER_A}/a.jpg",), "owner_id": OWNER_B}, "s3_key_not_allowed"),
        (PER_OWNER, {"keys": (f"uploads/{OWNER_A}/a.jpg",)}, "s3_key_not_allowed"),
        (PER_OWNER, {"keys": (f"uploads/{OWNER_A}x/a.jpg",), "owner_id": OWNER_A}, "s3_key_not_allowed"),
        (
            PER_OWNER,
            {
                "owner_id": OWNER_A,
                "keys": (f"uploads/{OWNER_A}/a.jpg",),
                "output": {"s3_prefix": f"deliveries/{OWNER_A}/p-42"},
            },
            None,
        ),  # fmt: skip
        (
            PER_OWNER,
            {
                "owner_id": OWNER_B,
                "keys": (f"uploads/{OWNER_B}/a.jpg",),
                "output": {"s3_prefix": f"deliveries/{OWNER_A}/p-42"},
            },
            "s3_prefix_not_allowed",
        ),  # fmt: skip
    ],
)
def test_a_spec_names_only_keys_under_its_roots(tmp_path, env, extra, code):
    # Given the daemon's roots and a spec naming S3 keys
    try:
        job = spec(**extra)
    except SpecError as refused:  # the spec's own syntax check came first
        assert refused.code == code
        return

    # When it is checked against the roots
    if code is None:
        confine(job, roots(tmp_path, **env))
        return
    with pytest.raises(SpecError) as caught:
        confine(job, roots(tmp_path, **env))

    # Then it is refused with a code that says which field, and why
    assert caught.value.code == code
    assert ("s3_key" if code.startswith("s3_key") else "s3_prefix") in caught.value.message


def test_the_refusal_says_an_owner_is_needed(tmp_path):
    with pytest.raises(SpecError) as caught:
        confine(spec(keys=(f"uploads/{OWNER_A}/a.jpg",)), roots(tmp_path, **PER_OWNER))
    assert "{owner_id} roots need an owner_id" in caught.value.message


def test_the_same_job_keeps_its_digest_through_a_rerun_another_job_does_not():
    # Given a job with a presigned input and a callback
    base = {
        "keys": (),
        "owner_id": OWNER_A,
        "inputs": [{"url": "https://in.example.com/a.jpg?X-Amz-Signature=1"}],
        "callback_url": "https://app.example.com/hooks?token=1",
    }

    def digest(**change: Any) -> str:
        extra = {**base, **change}
        raw = {"spec_version": 1, "job_id": "scan-1", "kind": "inspect", **extra}
        raw.pop("keys")
        return spec_digest(parse_job(raw))

    first = digest()
    # Then a re-run by hand (re-signed URLs, another queue, new params, metadata) is the same job
    assert digest(inputs=[{"url": "https://in.example.com/a.jpg?X-Amz-Signature=2"}]) == first
    assert (
        digest(priority="high", metadata={"try": "2"}, callback_url="https://app.example.com/h?t=2") == first
    )
    assert digest(owner_id=OWNER_A.upper()) == first
    # And other inputs, another destination or another owner are another job
    assert digest(inputs=[{"url": "https://in.example.com/b.jpg"}]) != first
    assert digest(output={"s3_prefix": "jobs"}) != first
    assert digest(owner_id=OWNER_B) != first


# -- who a job id belongs to: the ledger's atomic claim ----------------------------------------------------


def test_an_attempt_claims_the_id_and_another_owner_or_spec_is_refused_untouched(redis):
    # Given owner A's job running its first attempt
    ledger = Ledger(redis)
    assert ledger.begin_attempt("scan-1", rq_id="scan-1", worker="w1", owner=OWNER_A, spec="d1") == 1
    before = redis.hgetall("daemon:job:scan-1")

    # When another owner's spec, or another spec of A's, names the same id
    for owner, digest in ((OWNER_B, "d1"), ("", "d1"), (OWNER_A, "d2")):
        with pytest.raises(JobIdInUse) as caught:
            ledger.begin_attempt("scan-1", rq_id="scan-1", worker="w2", owner=owner, spec=digest)
        # Then it is refused, and the job's attempt, status and worker are as they were
        assert caught.value.code == "job_id_in_use"
        assert redis.hgetall("daemon:job:scan-1") == before

    # And the same job's next attempt (a retry, a resume elsewhere) counts on
    assert ledger.begin_attempt("scan-1", rq_id="scan-1", worker="w3", owner=OWNER_A, spec="d1") == 2


# -- the producers' atomic enqueue ------------------------------------------------------------------------


def run_node(redis_url: str, raw: dict, *, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["node", str(NODE_PRODUCER), "-"],
        input=json.dumps(raw), env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr
    return done


def raw_spec(job_id: str = "scan-1", **extra: Any) -> dict:
    return {
        "spec_version": 1,
        "job_id": job_id,
        "kind": "inspect",
        "inputs": [{"s3_key": "uploads/a.jpg"}],
        **extra,
    }


def test_enqueue_refuses_an_id_that_belongs_to_another_owner_in_both_producers(redis, redis_url):
    # Given owner A's job that ran and ended
    enqueue(redis, spec(owner_id=OWNER_A))
    Job.fetch("scan-1", connection=redis, serializer=JSONSerializer).set_status(JobStatus.FINISHED)
    redis.delete("rq:queue:default")  # (a worker took it)

    # When owner B (or nobody) enqueues the same id, from Python or from Node
    for owner in (OWNER_B, None):
        extra = {"owner_id": owner} if owner else {}
        with pytest.raises(SpecError) as caught:
            enqueue(redis, spec(**extra))
        assert caught.value.code == "job_id_in_use"
        done = run_node(redis_url, raw_spec(**extra), check=False)
        assert done.returncode == 1 and "belongs to another owner" in done.stderr

    # Then nothing was queued; owner A may run it again (by hand, a re-run), from either producer
    assert make_queue("default", redis).job_ids == []
    enqueue(redis, spec(owner_id=OWNER_A.upper()))
    assert make_queue("default", redis).job_ids == ["scan-1"]


def test_enqueue_of_another_spec_under_a_used_id_is_refused(redis):
    # Given a job that ran (its first attempt claimed the id for its spec) and ended
    enqueue(redis, spec())
    Ledger(redis).begin_attempt("scan-1", rq_id="scan-1", worker="w", owner="", spec=spec_digest(spec()))
    Job.fetch("scan-1", connection=redis, serializer=JSONSerializer).set_status(JobStatus.FAILED)
    redis.delete("rq:queue:default")  # (a worker took it)

    # When another set of inputs is enqueued under its id
    with pytest.raises(SpecError) as caught:
        enqueue(redis, spec(keys=("uploads/other.jpg",)))

    # Then it is refused; the same spec is accepted (a retry by hand)
    assert caught.value.code == "job_id_in_use" and "another spec" in caught.value.message
    enqueue(redis, spec(priority="high"))
    assert make_queue("high", redis).job_ids == ["scan-1"]


def test_producers_racing_on_one_id_push_it_once(redis, redis_url):
    # Given twelve enqueues of one job id at once: eight threads of Python, four Node processes
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def python_producer() -> None:
        start.wait()
        try:
            enqueue(Redis.from_url(redis_url), spec("raced"))
            outcomes.append("ok")
        except SpecError as refused:
            outcomes.append(refused.code)

    threads = [threading.Thread(target=python_producer) for _ in range(8)]
    nodes = [
        subprocess.Popen(
            ["node", str(NODE_PRODUCER), "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url},
        )  # fmt: skip
        for _ in range(4)
    ]
    for node in nodes:
        node.stdin.write(json.dumps(raw_spec("raced")))  # type: ignore[union-attr]
        node.stdin.close()  # type: ignore[union-attr]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for node in nodes:
        node.wait(timeout=60)
        outcomes.append(
            "ok" if node.returncode == 0 else "duplicate_job" if "already" in node.stderr.read() else "?"
        )

    # Then exactly one of them queued it, once; every other was told it is a duplicate
    assert sorted(outcomes) == ["duplicate_job"] * 11 + ["ok"]
    assert redis.lrange("rq:queue:default", 0, -1) == [b"raced"]


@pytest.mark.parametrize("producer", ["python", "node"])
def test_re_enqueueing_an_ended_job_starts_from_a_clean_rq_job(redis, redis_url, producer):
    # Given a job whose last run failed and left rq's traces: a result, an error, retries, a registry entry
    enqueue(redis, spec("rerun"))
    redis.delete("rq:queue:default")  # (a worker took it)
    traces = {
        "status": "failed",
        "exc_info": b"x",
        "retries_left": "2",
        "worker_name": "gpu-1",
        "result": "1",
    }
    redis.hset("rq:job:rerun", mapping=traces)
    redis.zadd("rq:failed:default", {"rerun": 1})
    redis.xadd("rq:results:rerun", {"type": "2"})

    # When it is enqueued again
    if producer == "python":
        enqueue(redis, spec("rerun"))
    else:
        run_node(redis_url, raw_spec("rerun"))

    # Then the rq job is fresh: queued, none of the old fields, out of the failed registry, no old result
    fields = redis.hgetall("rq:job:rerun")
    assert fields[b"status"] == b"queued"
    assert not {b"exc_info", b"retries_left", b"result"} & set(fields)
    assert fields.get(b"worker_name", b"") == b""
    assert redis.zscore("rq:failed:default", "rerun") is None
    assert not redis.exists("rq:results:rerun")
    assert redis.lrange("rq:queue:default", 0, -1) == [b"rerun"]
    stored = Job.fetch("rerun", connection=redis, serializer=JSONSerializer)
    assert stored.get_status() == JobStatus.QUEUED and stored.latest_result() is None


def test_a_refused_spec_is_reported_only_on_an_id_that_is_its_own(redis_url, tmp_path):
    # Given two queued jobs not run yet, claimed at enqueue: owner A's, and owner B's
    env = {"REDIS_URL": redis_url, "DAEMON_ENV_FILE": str(tmp_path / "absent.env"),
           "DAEMON_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    runtime = Runtime(load_settings(env))
    enqueue(runtime.redis, spec("a-job", owner_id=OWNER_A))
    enqueue(runtime.redis, spec("b-job", owner_id=OWNER_B))

    # When broken specs of owner B's (an unknown param) name both ids
    for job_id in ("a-job", "b-job"):
        broken = {**raw_spec(job_id), "owner_id": OWNER_B.upper(), "params": {"colour": "red"}}
        rq_job = Job.create(
            "daemon.entry.run_job", connection=runtime.redis, id=job_id, serializer=JSONSerializer
        )
        with pytest.raises(JobFailed):
            JobRunner(runtime, rq_job).prepare(broken)

    # Then B's own id shows the refusal on its row (attempt 0, below any real attempt); A's is untouched
    b_row = runtime.rows.read("b-job")
    assert b_row is not None and b_row["error_code"] == "unknown_field" and b_row["attempt"] == 0
    assert runtime.rows.read("a-job") is None
    # And neither ledger entry moved: no attempt, the owners their producers claimed
    assert [(runtime.ledger.get(j).attempt, runtime.ledger.get(j).owner) for j in ("a-job", "b-job")] == [
        (0, OWNER_A),
        (0, OWNER_B),
    ]
