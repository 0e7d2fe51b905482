"""Log lines: job context fields, journald priorities and one-line tracebacks, secrets masked."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from daemon.logs import log_context, setup_logging

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """setup_logging replaces the root handlers (pytest's included): put everything back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "urllib3", "botocore")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, noisy_level in noisy.items():
        logging.getLogger(name).setLevel(noisy_level)


@pytest.fixture
def plain(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """Logging set up as on a terminal (no JOURNAL_STREAM), captured."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    setup_logging("debug", stream=out)
    return out


@pytest.fixture
def journald(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """Logging set up as under systemd (JOURNAL_STREAM set), captured."""
    monkeypatch.setenv("JOURNAL_STREAM", "8:123456")
    out = io.StringIO()
    setup_logging("debug", stream=out)
    return out


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


# -- job context -----------------------------------------------------------------------------------------


def test_line_carries_job_attempt_and_stage_from_log_context(plain):
    # Given a job's context, and a stage nested inside it
    log = logging.getLogger("daemon.attempt.runner")

    # When lines are logged inside, inside the nested stage, and after both
    with log_context(job="job-42", attempt=3):
        log.info("attempt started")
        with log_context(stage="fetch"):
            log.info("stage started")
        log.info("back in the job")
    log.info("idle")

    # Then each line carries exactly the fields in force when it was logged
    started, staged, back, idle = lines(plain)
    assert "INFO    job=job-42 attempt=3 daemon.attempt.runner: attempt started" in started
    assert "job=job-42 attempt=3 stage=fetch daemon.attempt.runner: stage started" in staged
    assert "job=job-42 attempt=3 daemon.attempt.runner: back in the job" in back
    assert "job=" not in idle and "INFO    daemon.attempt.runner: idle" in idle


def test_terminal_lines_start_with_a_timestamp(plain):
    # Given logging on a terminal
    # When a line is logged
    logging.getLogger("daemon").warning("hello")

    # Then it starts with the time (journald is not there to add it)
    assert TIMESTAMP.match(lines(plain)[0])


# -- journald ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "prefix"),
    [(logging.ERROR, "<3>"), (logging.WARNING, "<4>"), (logging.INFO, "<6>"), (logging.DEBUG, "<7>")],
)
def test_journald_line_starts_with_the_syslog_priority_and_has_no_timestamp(journald, level, prefix):
    # Given logging under systemd
    # When a line is logged at a level
    logging.getLogger("daemon.worker.rq_worker").log(level, "event")

    # Then the line starts with that level's syslog priority and leaves the time to journald
    (line,) = lines(journald)
    assert line.startswith(prefix + logging.getLevelName(level))
    assert line.endswith("daemon.worker.rq_worker: event")
    assert not TIMESTAMP.search(line)


def test_journald_traceback_is_one_line(journald):
    # Given logging under systemd
    # When an exception is logged with its traceback
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("daemon.attempt.runner").exception("unexpected error")

    # Then the whole event is one journal line, traceback included
    (line,) = lines(journald)
    assert line.startswith("<3>ERROR")
    assert "unexpected error | Traceback (most recent call last):" in line
    assert line.endswith("ValueError: boom")


# -- secrets --------------------------------------------------------------------------------------------


def test_secrets_are_masked_whoever_logs_them(monkeypatch):
    # Given logging set up with two secret values
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    service_key = "eyJhbGciOiJIUzI1NiJ9.service-role"
    callback = "whsec_c2VjcmV0LWtleS12YWx1ZQ=="
    setup_logging("info", secrets=[service_key, callback], stream=out)

    # When other libraries log them: as an argument, in the message, and inside a traceback
    logging.getLogger("httpx").warning("request with apikey=%s", service_key)
    logging.getLogger("supabase.client").info(f"Bearer {service_key}")
    try:
        raise RuntimeError(f"signature failed with {callback}")
    except RuntimeError:
        logging.getLogger("standardwebhooks").exception("cannot sign")

    # Then every occurrence is masked and nothing else is lost
    text = out.getvalue()
    assert service_key not in text and callback not in text
    assert "apikey=***" in text and "Bearer ***" in text
    assert "RuntimeError: signature failed with ***" in text


def test_secrets_are_masked_in_journald_lines_too(journald_with_secret):
    # Given logging under systemd with a secret
    out, secret = journald_with_secret

    # When a library logs it inside a multi-line message
    logging.getLogger("urllib3.connectionpool").error("first line\nkey=%s", secret)

    # Then the single journal line has it masked
    (line,) = lines(out)
    assert line.startswith("<3>") and "key=***" in line and secret not in line


@pytest.fixture
def journald_with_secret(monkeypatch: pytest.MonkeyPatch) -> tuple[io.StringIO, str]:
    monkeypatch.setenv("JOURNAL_STREAM", "8:123456")
    out, secret = io.StringIO(), "sentry-dsn-secret-part"
    setup_logging("info", secrets=[secret], stream=out)
    return out, secret
