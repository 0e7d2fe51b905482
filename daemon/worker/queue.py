"""Jobs on the wire: rq queues with the JSON serializer, our single entry point, and its guard.

Anyone who can write to Redis can put a job naming any importable callable. `GuardedJob` refuses every
callable but `ENTRY_POINT` (and every rq success/failure/stopped callback) before importing anything,
so the worst a forged job can do is fail.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import import_attribute, now

from ..adapters.ledger import KEY_PREFIX as LEDGER_PREFIX
from ..adapters.ledger import STATE_TTL_S
from ..errors import DaemonError, SpecError
from ..handlers.registry import registry
from ..spec.model import PRIORITIES, JobSpec, spec_to_json
from ..spec.tenancy import Roots, confine, owner_of, spec_digest

ENTRY_POINT = "daemon.entry.run_job"
"""The only callable a worker of ours runs. Producers put it in the job's `data`."""

RESULT_TTL_S = 7 * 24 * 3600
"""How long rq keeps a finished job's result (the row in Supabase is the lasting record)."""

FAILURE_TTL_S = 30 * 24 * 3600
"""How long rq keeps a failed job for inspection (`rq info`, requeue by hand)."""


class ForbiddenCallable(DaemonError):  # noqa: N818
    """A job named a callable other than our entry point."""


class GuardedJob(Job):
    """An rq Job that resolves only our entry point, checked by name before any import."""

    @property
    def func(self) -> Any:
        name = self.func_name
        if name != ENTRY_POINT or self.instance is not None:
            raise ForbiddenCallable(f"job {self.id} names {name!r}; this worker only runs {ENTRY_POINT}")
        # Only now, the name checked, is it imported: by rq's own resolver, as for any rq job.
        return import_attribute(ENTRY_POINT)

    def _refuse_callback(self, which: str, name: str | None) -> None:
        if name:
            raise ForbiddenCallable(
                f"job {self.id} sets a {which} callback {name!r}; callbacks are not allowed"
            )

    @property
    def success_callback(self) -> Any:
        self._refuse_callback("success", self._success_callback_name)
        return None

    @property
    def failure_callback(self) -> Any:
        self._refuse_callback("failure", self._failure_callback_name)
        return None

    @property
    def stopped_callback(self) -> Any:
        self._refuse_callback("stopped", self._stopped_callback_name)
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        # rq 3's own job webhooks would make the worker send requests to any URL a job names (cloud
        # metadata, internal services). Our callbacks are signed and SSRF-guarded; these never go out.
        if self.webhooks:
            logging.getLogger(__name__).warning(
                "job %s carries %d rq webhook(s); not sent", self.id, len(self.webhooks)
            )


def make_queue(name: str, redis: Redis) -> Queue:
    return Queue(name, connection=redis, serializer=JSONSerializer, job_class=GuardedJob)


ENQUEUE_SCRIPT = Path(__file__).with_name("enqueue.lua")
"""The producers' one atomic enqueue (this module and scripts/node/enqueue.mjs run the same file)."""


def enqueue(redis: Redis, spec: JobSpec, *, priority: str | None = None, roots: Roots | None = None) -> Job:
    """Put a validated spec on its priority queue, the rq job id being the job id, in one atomic
    script: refused if the id is queued or running (`duplicate_job`) or belongs to another owner or
    another spec (`job_id_in_use`); a re-run of an ended id starts from a clean rq job."""
    queue_name = priority or spec.priority
    if queue_name not in PRIORITIES:
        raise SpecError(f"priority: expected one of {', '.join(PRIORITIES)}", code="invalid_priority")
    if roots is not None:
        confine(spec, roots)
    queue = make_queue(queue_name, redis)
    job = queue.create_job(
        ENTRY_POINT,
        args=(spec_to_json(spec),),
        job_id=spec.job_id,
        timeout=registry()[spec.kind].timeout_s,
        result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S,
        description=f"{spec.kind} {spec.job_id}",
        status=JobStatus.QUEUED,
    )
    job.origin, job.enqueued_at = queue.name, now()
    fields = [part for pair in job.to_dict().items() for part in pair]
    fields += ["status", JobStatus.QUEUED.value]
    keys = [job.key, queue.key, Queue.redis_queues_keys, LEDGER_PREFIX + spec.job_id]
    owner = owner_of(spec) or ""
    answer = redis.eval(
        ENQUEUE_SCRIPT.read_text(),
        len(keys),
        *keys,
        spec.job_id,
        owner,
        spec_digest(spec),
        STATE_TTL_S,
        *fields,
    )
    outcome, detail = (part.decode() if isinstance(part, bytes) else part for part in answer)
    if outcome == "duplicate_job":
        raise SpecError(f"job_id: {spec.job_id} is already {detail}", code="duplicate_job")
    if outcome == "job_id_in_use":
        raise SpecError(
            f"job_id: {spec.job_id} belongs to another {detail}: a new job needs a new id",
            code="job_id_in_use",
        )
    return job
