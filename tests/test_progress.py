"""ProgressReporter against real row stores: local JSON files and Supabase (PostgreSQL + PostgREST layer)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from daemon.adapters.outbox import ITEM_PREFIX, Outbox
from daemon.adapters.rows import LocalRows, RowStore, SupabaseRows
from daemon.adapters.runtime import Runtime
from daemon.attempt.progress import ProgressReporter
from daemon.config import load_settings
from daemon.worker.outbox_drainer import OutboxDrainer
from tests.fixtures_daemon import wait_until


class SpyRows:
    """A real row store, plus a record of every write: the thread that made it and whether it landed."""

    def __init__(self, inner: RowStore, server: Any = None) -> None:
        self.inner = inner
        self.server = server  # the PostgREST test server behind a SupabaseRows, if any
        self.calls: list[tuple[str, bool, dict[str, Any]]] = []

    def write(self, row: Any) -> None:
        thread = threading.current_thread().name
        try:
            self.inner.write(row)
        except Exception:
            self.calls.append((thread, False, dict(row)))
            raise
        self.calls.append((thread, True, dict(row)))

    def read(self, job_id: str) -> dict[str, Any] | None:
        return self.inner.read(job_id)

    @property
    def landed(self) -> list[dict[str, Any]]:
        return [row for _, ok, row in self.calls if ok]


def supabase_spy(env: dict[str, str], server: Any) -> SpyRows:
    rows = SupabaseRows(env["SUPABASE_URL"], env["SUPABASE_SERVICE_ROLE_KEY"], "jobs", timeout_s=5)
    return SpyRows(rows, server)


@pytest.fixture(params=["local", "supabase"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SpyRows:
    if request.param == "local":
        return SpyRows(LocalRows(tmp_path))
    return supabase_spy(request.getfixturevalue("supabase_env"), request.getfixturevalue("supabase_server"))


@pytest.fixture
def supabase_store(supabase_env: dict[str, str], supabase_server: Any) -> SpyRows:
    return supabase_spy(supabase_env, supabase_server)


@pytest.fixture
def job_id() -> str:
    """A fresh id per test, so a writer thread still retrying cannot touch another test's row."""
    return f"job-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_reporter(job_id: str) -> Iterator[Callable[..., ProgressReporter]]:
    made: list[ProgressReporter] = []

    def make(rows: RowStore, *, outbox: Outbox | None = None, **timing: float) -> ProgressReporter:
        base = {"id": job_id, "kind": "inspect", "attempt": 1, "worker_id": "gpu-1", "status": "running"}
        timing = {"min_interval_s": 0.05, "heartbeat_s": 60.0, **timing}
        reporter = ProgressReporter(rows, base, outbox=outbox, **timing)
        made.append(reporter)
        return reporter

    yield make
    # A writer still retrying after an outage test ends once its row lands: let it, so no thread of this
    # test writes during the next one.
    for reporter in made:
        server = getattr(reporter.rows, "server", None)
        if server is not None:
            server.clear_outage()
        reporter.close(timeout_s=10)


def stored(rows: SpyRows, job_id: str) -> dict[str, Any]:
    row = rows.read(job_id)
    assert row is not None, f"no row for {job_id}"
    return row


def heartbeat(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(row["heartbeat_at"]).replace("Z", "+00:00"))


def post_count(server: Any) -> int:
    return sum(1 for r in server.requests if r.method == "POST" and r.path == "/rest/v1/jobs")


# -- throttling and ordering -----------------------------------------------------------------------------


def test_burst_of_updates_becomes_a_handful_of_writes(store, make_reporter, job_id):
    # Given a reporter writing at most every 60 s (far longer than the loop takes on any machine)
    reporter = make_reporter(store, min_interval_s=60.0).start()

    # When the job reports 1000 times in a tight loop (yielding the GIL as real work does), then ends
    for step in range(1000):
        reporter.update(progress=step // 10, stage=f"stage-{step // 250}")
        time.sleep(0.0002)
    landed = reporter.close(status="completed", stage="done", progress=100)

    # Then only the first and the final state were written, and the final row is the last state
    assert landed is True
    assert 2 <= len(store.calls) <= 3, len(store.calls)
    if store.server is not None:
        assert post_count(store.server) == len(store.calls)
    final = stored(store, job_id)
    assert final["status"] == "completed" and final["progress"] == 100 and final["stage"] == "done"


def test_latest_value_wins_without_waiting_for_close(store, make_reporter, job_id):
    # Given a throttled reporter
    reporter = make_reporter(store, min_interval_s=0.2).start()

    # When progress moves through many values faster than the throttle
    for percent in range(1, 74):
        reporter.update(progress=percent, stage="train")

    # Then the row soon shows the last one, without waiting for close()
    wait_until(
        lambda: (store.read(job_id) or {}).get("progress") == 73,
        timeout=5,
        message="last progress not written",
    )
    assert stored(store, job_id)["stage"] == "train"


def test_progress_never_decreases(store, make_reporter, job_id):
    # Given a reporter at 60 %
    reporter = make_reporter(store).start()
    reporter.update(progress=60)

    # When the job reports lower progress, then more than 100 %
    reporter.update(progress=30)
    assert reporter.state["progress"] == 60
    reporter.update(progress=250)
    assert reporter.state["progress"] == 100

    # Then no write ever carried a lower value than an earlier one, and the row ends at 100
    reporter.close(status="failed", progress=10, error_code="x", error_message="y")
    written = [row["progress"] for row in store.landed]
    assert written == sorted(written)
    assert stored(store, job_id)["progress"] == 100


# -- heartbeat -----------------------------------------------------------------------------------------


def test_heartbeat_refreshes_while_idle(store, make_reporter, job_id):
    # Given a reporter with a 0.2 s heartbeat whose first row has landed
    reporter = make_reporter(store, heartbeat_s=0.2).start()
    wait_until(lambda: store.read(job_id), timeout=5, message="first row not written")
    first = heartbeat(stored(store, job_id))

    # When the job reports nothing for a while
    # Then the row's heartbeat still moves forward
    wait_until(lambda: heartbeat(stored(store, job_id)) > first, timeout=5, message="heartbeat not refreshed")
    reporter.close()


def test_heartbeat_refreshes_while_progress_keeps_flowing(tmp_path, make_reporter, job_id):
    # Given a reporter writing local rows at most every 0.05 s, with a 0.3 s heartbeat
    # (local rows: a write takes a millisecond, so only the reporter's own logic decides the heartbeat)
    rows = SpyRows(LocalRows(tmp_path))
    reporter = make_reporter(rows, min_interval_s=0.05, heartbeat_s=0.3).start()

    # When the job reports progress continuously, until more than ten rows have landed and at least
    # one heartbeat interval has passed since the first (counted, however slow the machine)
    def enough() -> bool:
        landed = list(rows.landed)
        return len(landed) > 10 and datetime.now(UTC) - heartbeat(landed[0]) > timedelta(seconds=0.3)

    step, deadline = 0, time.monotonic() + 120
    while not enough():
        assert time.monotonic() < deadline, f"only {len(rows.landed)} rows landed"
        step += 1
        reporter.update(progress=min(step, 99), stage=f"step-{step}")
        time.sleep(0.02)
    reporter.update(progress=100)
    reporter.close()

    # Then the heartbeat in the written rows moved forward too, not only the progress
    beats = [heartbeat(row) for row in rows.landed]
    assert beats[-1] > beats[0]


# -- Supabase outages ------------------------------------------------------------------------------------


def test_outage_never_blocks_the_job(supabase_store, supabase_server, make_reporter, job_id):
    # Given Supabase down, and a reporter whose writer has already met the outage
    supabase_server.outage(503)
    reporter = make_reporter(supabase_store).start()
    wait_until(lambda: supabase_store.calls, timeout=5, message="writer made no attempt")

    # When the job reports 1000 times from its own thread
    job = threading.Thread(
        target=lambda: [reporter.update(progress=n // 10) for n in range(1000)], name="job"
    )
    job.start()
    job.join(timeout=10)

    # Then every update returned while the outage lasted, and only the writer thread touched Supabase
    assert not job.is_alive()
    assert supabase_store.landed == []
    assert {thread for thread, _, _ in supabase_store.calls} == {"progress-writer"}
    assert all(r.status == 503 for r in supabase_server.requests)

    # And once Supabase is back the last state lands
    supabase_server.clear_outage()
    assert reporter.close(status="completed", progress=100) is True
    assert stored(supabase_store, job_id)["progress"] == 100


def test_close_during_outage_hands_the_final_row_to_the_outbox(
    supabase_store, supabase_env, supabase_server, jobs_rows, redis_url, tmp_path, make_reporter, job_id
):
    # Given a running job whose row has landed at 40 %, with the daemon's outbox in Redis
    redis = Redis.from_url(redis_url)
    settings = load_settings(
        {**supabase_env, "REDIS_URL": redis_url, "DAEMON_ENV_FILE": str(tmp_path / "absent.env")}
    )
    outbox = Runtime(settings).outbox  # its items authenticated with the key the drainer checks
    reporter = make_reporter(supabase_store, outbox=outbox).start()
    reporter.update(progress=40, stage="train")
    wait_until(lambda: jobs_rows(id=job_id) and jobs_rows(id=job_id)[0]["progress"] == 40, timeout=5)

    # When the job ends while Supabase is down
    supabase_server.outage(503)
    landed = reporter.close(timeout_s=0.5, status="completed", stage="done", progress=100)

    # Then close() says the row did not land, and the final row waits in the outbox
    assert landed is False
    assert outbox.pending() == 1
    queued = json.loads(redis.get(ITEM_PREFIX + f"row:{job_id}"))["data"]
    assert queued["status"] == "completed" and queued["progress"] == 100 and queued["attempt"] == 1
    assert jobs_rows(id=job_id)[0]["status"] == "running"

    # When Supabase is back and the worker's drainer runs
    supabase_server.clear_outage()
    delivered = OutboxDrainer(Runtime(settings)).drain_once()

    # Then the outbox wrote the final row and is empty
    assert delivered == 1 and outbox.pending() == 0
    (row,) = jobs_rows(id=job_id)
    assert row["status"] == "completed" and row["progress"] == 100 and row["stage"] == "done"
    assert row["finished_at"] is not None
    redis.close()
