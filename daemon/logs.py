"""Logging: one line per event, carrying job id, attempt and stage, in levels journald understands.

Under systemd (JOURNAL_STREAM is set) each line starts with a syslog priority prefix (`<3>` error,
`<4>` warning, `<6>` info, `<7>` debug) so `journalctl -p warning` works, and the timestamp is left to
journald. Secret values from the settings are masked in every line, whatever logged them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

# The dict is never mutated, only replaced, so a shared empty default is safe.
_job_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "job_context",
    default={},  # noqa: B039
)

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Attach fields (job, attempt, stage) to every line logged inside the block, in this thread."""
    merged = {**_job_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = _job_context.set(merged)
    try:
        yield
    finally:
        _job_context.reset(token)


def current_context() -> dict[str, str]:
    return dict(_job_context.get())


def bind_context(**fields: object) -> None:
    """Set fields for the rest of this thread's life (the work-horse process runs one job)."""
    _job_context.set({**_job_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _job_context.get()
        record.job_fields = " ".join(f"{k}={ctx[k]}" for k in ("job", "attempt", "stage") if k in ctx)
        return True


class _Formatter(logging.Formatter):
    def __init__(self, *, journald: bool, secrets: Iterable[str]) -> None:
        fmt = "%(levelname)-7s %(job_fields)s%(sep)s%(name)s: %(message)s"
        if not journald:
            fmt = "%(asctime)s " + fmt
        super().__init__(fmt, datefmt="%Y-%m-%dT%H:%M:%S")
        self.journald = journald
        self.secrets = tuple(s for s in secrets if s and len(s) >= 6)

    def format(self, record: logging.LogRecord) -> str:
        record.sep = " " if getattr(record, "job_fields", "") else ""
        if not hasattr(record, "job_fields"):
            record.job_fields = ""
        line = super().format(record)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        # One event, one line: a traceback becomes one journal entry, not forty.
        line = line.replace("\n", " | ") if self.journald else line
        if self.journald:
            line = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def setup_logging(level: str = "info", *, secrets: Iterable[str] = (), stream: TextIO | None = None) -> None:
    """Configure the root logger once, at start-up. The worker logs to stdout (journald); the operator
    commands log to stderr, so their stdout stays machine-readable."""
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(_Formatter(journald=journald, secrets=secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # rq logs every poll at INFO; keep its voice but drop the chatter.
    for noisy in ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
