"""How a job's state leaves the daemon: progress rows and callbacks, shaped in one place.

Used by the runner (inside the work-horse) and by the worker parent when a horse dies or a job is
found abandoned, so every path reports the same row fields and callback payloads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..adapters.callbacks import build_event
from ..adapters.rows import RowWriteError, utcnow_iso
from ..adapters.runtime import Runtime
from ..adapters.storage import StoredObject
from ..errors import JobError
from ..spec.legacy import salvage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """Just enough of a job to report on it: what a broken spec may still tell us, or a parsed one."""

    job_id: str
    kind: str
    callback_url: str | None = None
    callback_format: str = "standard"
    metadata: Mapping[str, str] | None = None
    owner_id: str | None = None

    @classmethod
    def of(cls, spec: Any) -> Identity:
        return cls(
            job_id=spec.job_id,
            kind=spec.kind,
            callback_url=spec.callback_url,
            callback_format=spec.callback_format,
            metadata=dict(spec.metadata or {}),
            owner_id=str(spec.owner_id).lower() if spec.owner_id else None,
        )

    @classmethod
    def salvage(cls, raw: Any) -> Identity | None:
        """From a spec that failed validation, keep the id and callback if each is valid on its own,
        so the failure still reaches the row and the client."""
        found = salvage(raw)
        if found is None:
            return None
        callback = found.callback_url, found.callback_format
        return cls(found.job_id, found.kind, *callback, found.metadata, found.owner_id)


def base_row(identity: Identity, attempt: int, worker: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": identity.job_id,
        "kind": identity.kind,
        "attempt": attempt,
        "worker_id": worker,
    }
    if identity.owner_id:
        row["owner_id"] = identity.owner_id
    return row


def error_fields(error: JobError) -> dict[str, Any]:
    return {"error_code": error.code, "error_message": error.message[:2000]}


def outputs_data(outputs: Mapping[str, StoredObject]) -> dict[str, Any]:
    return {
        name: {"uri": o.uri, "size": o.size, "sha256": o.sha256, "content_type": o.content_type}
        for name, o in outputs.items()
    }


CANCELED = JobError("canceled on request", code="canceled")


def notify_ended(
    runtime: Runtime,
    identity: Identity,
    attempt: int,
    status: str,
    *,
    error: JobError | None = None,
    outputs: Mapping[str, Any] | None = None,
    result: Mapping[str, Any] | None = None,
) -> None:
    """The callback that ends an attempt: `job.<status>`, with the error or the outputs (and the
    job's result, e.g. the splat manifest)."""
    data: dict[str, Any] = {"status": status}
    if error is not None:
        data["error"] = {"code": error.code, "message": error.message}
    if outputs is not None:
        data["outputs"] = dict(outputs)
    if result is not None:
        data["result"] = dict(result)
    notify(runtime, identity, attempt, f"job.{status}", 100, data)


def write_row(runtime: Runtime, row: Mapping[str, Any]) -> None:
    """Write a row now; if the store is down, leave it to the outbox (used outside a running job)."""
    row = {**row, "heartbeat_at": utcnow_iso()}
    try:
        runtime.rows.write(row)
        return
    except RowWriteError as exc:
        if not exc.retryable:
            log.error("row for %s refused: %s", row["id"], exc)
            return
        log.warning("row for %s not written (%s); queued in the outbox", row["id"], exc)
    runtime.outbox.put_row(row)


def notify(
    runtime: Runtime, identity: Identity, attempt: int, event_type: str, seq: int, data: Mapping[str, Any]
) -> None:
    """Queue a signed callback in the outbox; the worker's drainer delivers it, retrying as needed."""
    if not identity.callback_url:
        return
    event = build_event(
        url=identity.callback_url,
        type=event_type,
        job_id=identity.job_id,
        attempt=attempt,
        seq=seq,
        data=dict(data),
        fmt=identity.callback_format,
        metadata=identity.metadata,
    )
    if event is None:
        return
    try:
        runtime.outbox.put_callback(
            {"url": event.url, "body": event.body.decode(), "type": event.type, "job_id": event.job_id},
            webhook_id=event.webhook_id,
        )
    except Exception:
        log.exception("callback %s for %s could not be queued", event_type, identity.job_id)
