"""The queue guard and `enqueue()` against a real Redis: forged jobs are refused before any import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from redis import Redis
from rq import Callback, Queue, Webhook
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

import daemon.entry
from daemon.errors import SpecError
from daemon.handlers import parse_job, registry
from daemon.spec.model import spec_to_json
from daemon.worker.queue import ENTRY_POINT, ForbiddenCallable, GuardedJob, enqueue, make_queue
from tests.fixtures_daemon import ROOT

PAYLOAD = "tests.forged_payload"
"""A real module whose import writes a marker file (see tests/forged_payload.py). Never imported by the
test process itself: a cached module would not mark a second import."""


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """The file the payload module writes if it is ever imported or run, in this process or a child."""
    path = tmp_path / "payload-marker"
    monkeypatch.setenv("FORGED_PAYLOAD_MARKER", str(path))
    return path


def test_the_payload_module_marks_its_import(marker):
    # The control for the tests below: importing the payload module does leave the marker
    subprocess.run([sys.executable, "-c", f"import {PAYLOAD}"], cwd=ROOT, env=os.environ, check=True)
    assert marker.read_text() == "imported\n"


def forge(redis: Redis, func: str, **options) -> str:
    """Put a job on the default queue the way anyone with Redis access could: plain rq, JSON serializer."""
    queue = Queue("default", connection=redis, serializer=JSONSerializer)
    return queue.enqueue_call(func, args=({"job_id": "x"},), **options).id


def resolve(job: Job) -> object:
    """What rq's worker does before running a job: look up its callable."""
    return job.func


def fetch_guarded(redis: Redis, job_id: str) -> Job:
    """The job as our worker sees it (its queues use GuardedJob)."""
    job = make_queue("default", redis).fetch_job(job_id)
    assert isinstance(job, GuardedJob)
    return job


def spec(job_id: str = "scan-1", **extra):
    return parse_job(
        {
            "spec_version": 1,
            "job_id": job_id,
            "kind": "inspect",
            "inputs": [{"url": "https://example.com/a.jpg"}],
        }
        | extra
    )


# -- the callable ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "func",
    [
        "os.system",
        "subprocess.check_call",
        "daemon.cli.main",
        "daemon.attempt.runner.JobRunner",
        "daemon.entry.configure",
    ],
)
def test_guard_refuses_any_callable_but_the_entry_point(redis, func):
    # Given a forged job naming some importable callable
    job = fetch_guarded(redis, forge(redis, func))

    # When the worker resolves it / Then it is refused by name
    with pytest.raises(ForbiddenCallable, match="only runs daemon.entry.run_job"):
        resolve(job)


def test_guard_refuses_without_importing_the_named_module(redis, marker):
    # Given a forged job naming a real module whose import would leave a marker
    job = fetch_guarded(redis, forge(redis, f"{PAYLOAD}.payload"))

    # When the worker resolves it
    with pytest.raises(ForbiddenCallable, match=f"names '{PAYLOAD}.payload'"):
        resolve(job)

    # Then the refusal came before any import was tried
    assert not marker.exists()


@pytest.mark.parametrize(
    ("func_name", "instance"),
    [("run_job", {"module": "daemon.entry"}), (ENTRY_POINT, "daemon")],
    ids=["method-name", "entry-point-name"],
)
def test_guard_refuses_the_instance_method_form(redis, func_name, instance):
    # Given a forged job in rq's instance-method form: (instance, method name)
    forged = Job.create(
        func_name,
        args=({},),
        connection=redis,
        serializer=JSONSerializer,
        id="forged-method",
        origin="default",
    )
    forged.instance = instance
    forged.save()

    # When the worker resolves it / Then it is refused, even when the name is our entry point's
    with pytest.raises(ForbiddenCallable):
        resolve(fetch_guarded(redis, "forged-method"))


def test_guard_resolves_our_entry_point(redis):
    # Given a job put by enqueue()
    enqueue(redis, spec())

    # When the worker resolves it
    # Then it gets our one entry point, with no callbacks
    job = fetch_guarded(redis, "scan-1")
    assert job.func is daemon.entry.run_job
    assert job.success_callback is None and job.failure_callback is None and job.stopped_callback is None


# -- rq callbacks and webhooks ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["success", "failure", "stopped"])
def test_guard_refuses_rq_callbacks_without_importing_them(redis, marker, which):
    # Given a forged job naming our entry point but carrying an rq callback from a module that marks
    # its import
    name = f"{PAYLOAD}.hook"
    job = fetch_guarded(redis, forge(redis, ENTRY_POINT, **{f"on_{which}": Callback(name)}))

    # When the worker looks up that callback
    with pytest.raises(ForbiddenCallable, match=f"{which} callback"):
        getattr(job, f"{which}_callback")

    # Then it was refused by name, nothing imported
    assert not marker.exists()


def test_forged_job_cannot_make_the_worker_send_rq_webhooks(redis, webhook_receiver):
    # Given a forged job carrying an rq webhook pointing anywhere (here: our receiver)
    hook = Webhook(webhook_receiver.url + "/exfil", "failed", method="POST")
    job_id = forge(redis, "os.system", webhooks=[hook])

    # When the worker refuses it and reports the failure as rq does
    try:
        job = fetch_guarded(redis, job_id)
        with pytest.raises(ForbiddenCallable):
            resolve(job)
        job.send_webhooks(JobStatus.FAILED, exc_string="ForbiddenCallable")
    except ForbiddenCallable:
        pass  # refusing the whole job at fetch time is fine too

    # Then no request left the worker
    assert webhook_receiver.rejected == [] and webhook_receiver.attempts == []


# -- enqueue ---------------------------------------------------------------------------------------------


def test_enqueue_puts_the_job_on_its_priority_queue_with_the_handlers_timeout(redis):
    # Given a valid high-priority spec
    job_spec = spec(priority="high")

    # When it is enqueued
    enqueue(redis, job_spec)

    # Then it is on the high queue only, under its own id, naming our entry point with the kind's timeout
    assert make_queue("high", redis).job_ids == ["scan-1"]
    assert make_queue("default", redis).job_ids == [] and make_queue("low", redis).job_ids == []
    stored = Job.fetch("scan-1", connection=redis, serializer=JSONSerializer)
    assert stored.func_name == ENTRY_POINT and stored.instance is None
    assert stored.timeout == registry()["inspect"].timeout_s
    assert list(stored.args) == [spec_to_json(job_spec)]
    assert stored.get_status() == JobStatus.QUEUED


def test_enqueue_priority_argument_overrides_the_spec(redis):
    # Given a default-priority spec
    # When it is enqueued with priority low
    enqueue(redis, spec(), priority="low")

    # Then it is on the low queue
    assert make_queue("low", redis).job_ids == ["scan-1"]
    assert make_queue("default", redis).job_ids == []


def test_enqueue_refuses_an_unknown_priority(redis):
    # When a spec is enqueued with a priority that is not a queue of ours
    with pytest.raises(SpecError) as caught:
        enqueue(redis, spec(), priority="urgent")

    # Then it is refused and nothing was queued
    assert caught.value.code == "invalid_priority"
    assert not any(make_queue(name, redis).job_ids for name in ("high", "default", "low", "urgent"))


@pytest.mark.parametrize("status", [None, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED])
def test_enqueue_refuses_a_duplicate_of_an_active_job(redis, status):
    # Given a job that is queued (or started, scheduled, deferred)
    enqueue(redis, spec())
    if status is not None:
        Job.fetch("scan-1", connection=redis, serializer=JSONSerializer).set_status(status)

    # When the same job id is enqueued again
    with pytest.raises(SpecError) as caught:
        enqueue(redis, spec())

    # Then it is refused as a duplicate, and the queue still holds one job
    assert caught.value.code == "duplicate_job"
    assert make_queue("default", redis).job_ids == ["scan-1"]


@pytest.mark.parametrize(
    "status", [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED]
)
def test_enqueue_accepts_the_id_of_a_job_that_ended(redis, status):
    # Given a job that ended
    enqueue(redis, spec())
    Job.fetch("scan-1", connection=redis, serializer=JSONSerializer).set_status(status)

    # When the same job id is enqueued again (a re-run)
    enqueue(redis, spec())

    # Then it is queued again
    assert Job.fetch("scan-1", connection=redis, serializer=JSONSerializer).get_status() == JobStatus.QUEUED
