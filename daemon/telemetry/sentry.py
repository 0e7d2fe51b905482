"""Sentry, when SENTRY_DSN is set: rq's integration for job errors, plus abandoned jobs, which the
integration never sees (they are found by registry cleanup, not raised in a job).

Nothing secret leaves: events carry no local variables (a frame's locals hold specs, settings and
presigned URLs), and `scrub` rewrites every string of an event before it is sent: the configured
secrets (service-role key, callback secret, DSN, Redis password) become `[Filtered]`, as do a URL's
password and the signing parameters of a presigned URL (`X-Amz-Signature`, `X-Amz-Credential`, …).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from ..config import Settings, secret_values

log = logging.getLogger(__name__)

_enabled = False

FILTERED = "[Filtered]"

MAX_VALUE_LENGTH = 4096
"""Longest string Sentry keeps in an event (messages, breadcrumbs): enough for a traceback's line."""

_SIGNED_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-[a-z-]+|signature|awsaccesskeyid|expires|key-pair-id|policy|sig|se|sp|sv|sr|token)=)"
    r"[^&#\s\"'<>]*"
)
"""A presigned URL's signing parameters (S3 SigV2/SigV4, CloudFront, Azure SAS, generic tokens)."""

_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^@/\s]+@")
"""`scheme://user:password@` in any URL (a Redis URL may carry one)."""


def scrubber(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function that filters `secrets` and URL credentials out of one string."""
    known = sorted({s for s in secrets if s}, key=len, reverse=True)

    def scrub(text: str) -> str:
        for secret in known:
            text = text.replace(secret, FILTERED)
        text = _SIGNED_QUERY.sub(lambda m: m.group(1) + FILTERED, text)
        return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{FILTERED}@", text)

    return scrub


def scrubbed(value: Any, scrub: Callable[[str], str]) -> Any:
    """`value` (an event, or any part of one) with every string, key or value, scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrubbed(k, scrub): scrubbed(v, scrub) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrubbed(v, scrub) for v in value)
    return value


def init_sentry(settings: Settings) -> None:
    global _enabled
    if not settings.sentry_dsn:
        return
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.rq import RqIntegration

    scrub = scrubber(secret_values(settings).values())
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment,
        integrations=[RqIntegration(), LoggingIntegration(event_level=logging.ERROR)],
        send_default_pii=False,
        include_local_variables=False,
        max_value_length=MAX_VALUE_LENGTH,
        before_send=lambda event, hint: scrubbed(event, scrub),
        before_breadcrumb=lambda crumb, hint: scrubbed(crumb, scrub),
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
