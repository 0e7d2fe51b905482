"""Sentry, when SENTRY_DSN is set: rq's integration for job errors, plus abandoned jobs, which the
integration never sees (they are found by registry cleanup, not raised in a job)."""

from __future__ import annotations

import logging
from typing import Any

from ..config import Settings

log = logging.getLogger(__name__)

_enabled = False


def init_sentry(settings: Settings) -> None:
    global _enabled
    if not settings.sentry_dsn:
        return
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.rq import RqIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment,
        integrations=[RqIntegration(), LoggingIntegration(event_level=logging.ERROR)],
        send_default_pii=False,
    )
    sentry_sdk.set_tag("worker", settings.worker_name)
    _enabled = True
    log.info("sentry enabled (environment %s)", settings.sentry_environment)


def capture_abandoned(job: Any) -> None:
    if not _enabled:
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        scope.set_tag("rq_job_id", job.id)
        scope.set_tag("queue", job.origin)
        scope.set_context("rq_job", {"id": job.id, "description": job.description, "worker": job.worker_name})
        sentry_sdk.capture_message(f"abandoned job {job.id}: its worker stopped heartbeating", level="error")
