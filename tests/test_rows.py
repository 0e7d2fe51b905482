"""Progress rows: the merge rules for local rows, atomic JSON files, and Supabase's answers as errors."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from daemon.adapters.rows import LocalRows, RowWriteError, SupabaseRows, merge_row

OWNER_A, OWNER_B = "0b5c7d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e", "9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f"
T1, T2, T3 = "2026-01-02T03:04:01.000Z", "2026-01-02T03:04:02.000Z", "2026-01-02T03:04:03.000Z"


def row(**fields) -> dict:
    return {"id": "job-1", "kind": "inspect", "attempt": 1, "status": "running", **fields}


# -- merge_row ------------------------------------------------------------------------------------------


def test_first_write_gets_defaults_and_no_finished_at():
    # Given no row yet
    # When the first write of a running job arrives
    merged = merge_row(None, row(stage="starting"))

    # Then it is kept with the table's defaults, open-ended
    assert merged is not None
    assert merged["progress"] == 0 and merged["outputs"] == {}
    assert merged["created_at"] and merged["updated_at"]
    assert merged["finished_at"] is None


def test_write_from_a_stale_attempt_is_dropped():
    # Given a row of attempt 2
    old = merge_row(None, row(attempt=2, progress=10))

    # When a late write of attempt 1 arrives
    # Then it is dropped
    assert merge_row(old, row(attempt=1, progress=90, status="failed")) is None


def test_terminal_status_is_final_for_its_attempt():
    # Given attempt 1 completed
    done = merge_row(None, row(status="completed", progress=100))

    # When a late progress write of the same attempt arrives
    # Then it cannot reopen the attempt
    assert merge_row(done, row(status="running", progress=60)) is None


def test_a_new_attempt_may_follow_a_terminal_one():
    # Given attempt 1 failed
    failed = merge_row(None, row(status="failed", progress=40, error_code="worker_lost"))

    # When attempt 2 starts (requeued by hand)
    merged = merge_row(failed, row(attempt=2, status="running", progress=2))

    # Then the row follows attempt 2 and is open again
    assert merged is not None
    assert merged["attempt"] == 2 and merged["status"] == "running" and merged["progress"] == 2
    assert merged["finished_at"] is None


def test_progress_is_monotonic_within_an_attempt():
    # Given attempt 1 at 60 %
    old = merge_row(None, row(progress=60))

    # When a write with lower progress of the same attempt arrives (a retried older write)
    merged = merge_row(old, row(progress=30, stage="train"))

    # Then progress stays at 60 but the other fields are taken
    assert merged is not None
    assert merged["progress"] == 60 and merged["stage"] == "train"


def test_a_new_attempt_may_restart_progress_lower():
    # Given attempt 1 requeued at 80 %
    old = merge_row(None, row(status="requeued", progress=80))

    # When attempt 2 starts at 3 %
    merged = merge_row(old, row(attempt=2, progress=3))

    # Then the row shows attempt 2's progress
    assert merged is not None and merged["progress"] == 3


def test_write_without_attempt_counts_as_the_current_attempt():
    # Given attempt 2 at 50 %
    old = merge_row(None, row(attempt=2, progress=50))

    # When a partial write without an attempt arrives
    merged = merge_row(old, {"id": "job-1", "progress": 20, "stage": "export"})

    # Then it merges into attempt 2, progress still monotonic
    assert merged is not None
    assert merged["attempt"] == 2 and merged["progress"] == 50 and merged["stage"] == "export"


@pytest.mark.parametrize(("status", "finished"), [
    ("completed", True), ("failed", True), ("canceled", True), ("requeued", False), ("running", False),
])  # fmt: skip
def test_finished_at_is_set_on_terminal_status_only(status, finished):
    # Given a running row
    old = merge_row(None, row(progress=10))

    # When it moves to a status
    merged = merge_row(old, row(status=status))

    # Then finished_at is set exactly when the status is terminal
    assert merged is not None
    assert (merged["finished_at"] is not None) is finished


def test_heartbeat_and_started_at_never_go_back():
    # Given a row started at T1 with a heartbeat at T3
    old = merge_row(None, row(started_at=T1, heartbeat_at=T3))

    # When a retried older write arrives with an earlier heartbeat and a later start
    merged = merge_row(old, row(started_at=T2, heartbeat_at=T2, progress=5))

    # Then the heartbeat stays at T3 and the first start is kept
    assert merged is not None
    assert merged["heartbeat_at"] == T3 and merged["started_at"] == T1


# -- LocalRows ------------------------------------------------------------------------------------------


def test_local_rows_round_trip_with_the_merge_rules(tmp_path):
    # Given local rows
    rows = LocalRows(tmp_path)

    # When attempt 2 writes, then a late attempt-1 write arrives
    rows.write(row(attempt=2, progress=30))
    rows.write(row(attempt=1, progress=90, status="failed"))

    # Then the file holds attempt 2's row
    stored = rows.read("job-1")
    assert stored is not None
    assert stored["attempt"] == 2 and stored["progress"] == 30 and stored["status"] == "running"
    assert json.loads((tmp_path / "jobs" / "job-1.json").read_text()) == stored
    assert rows.read("job-unknown") is None


def test_local_row_writes_are_logged_at_debug_not_info(tmp_path, caplog):
    # Given local rows, and a log at INFO as the worker runs it
    rows = LocalRows(tmp_path)
    caplog.set_level(logging.DEBUG, logger="daemon.adapters.rows")
    # When a running job writes its row many times
    for progress in range(1, 21):
        rows.write({"id": "job-1", "attempt": 1, "status": "running", "progress": progress})
    # Then none of those writes is an INFO line (they would flood journalctl), each is a DEBUG one
    records = [r for r in caplog.records if r.name == "daemon.adapters.rows"]
    assert len(records) == 20
    assert all(r.levelno == logging.DEBUG for r in records)


def test_local_rows_reader_never_sees_a_partial_file(tmp_path):
    # Given local rows being rewritten many times with a large payload
    rows = LocalRows(tmp_path)
    rows.write(row(progress=0))
    outputs = {f"file-{n}.ply": {"uri": "x" * 200, "size": n} for n in range(300)}
    torn: list[Exception] = []

    def writer() -> None:
        for progress in range(1, 100):
            rows.write(row(progress=progress, outputs=outputs))

    # When another thread reads the row all the while
    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while thread.is_alive() or reads == 0:
        try:
            assert rows.read("job-1") is not None
        except json.JSONDecodeError as exc:
            torn.append(exc)
        reads += 1
    thread.join()

    # Then every read saw a whole row, and no temporary file is left over
    assert torn == []
    assert rows.read("job-1")["progress"] == 99
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["job-1.json"]


def test_local_rows_failed_write_keeps_the_previous_row(tmp_path):
    # Given a stored row
    rows = LocalRows(tmp_path)
    rows.write(row(progress=40))

    # When a write fails half-way through serialising (a value JSON cannot hold)
    with pytest.raises(TypeError):
        rows.write(row(progress=50, outputs={"a": "b", "z": object()}))

    # Then the stored row is the previous one, intact
    stored = rows.read("job-1")
    assert stored is not None and stored["progress"] == 40


def test_local_rows_failed_write_leaves_no_temporary_file(tmp_path):
    # Given a stored row
    rows = LocalRows(tmp_path)
    rows.write(row(progress=40))

    # When a write fails half-way through serialising
    with pytest.raises(TypeError):
        rows.write(row(progress=50, outputs={"z": object()}))

    # Then the state directory holds only the row itself
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["job-1.json"]


# -- SupabaseRows against the real PostgREST layer -------------------------------------------------------


@pytest.fixture
def supabase_rows(supabase_env: dict[str, str]) -> SupabaseRows:
    return SupabaseRows(
        supabase_env["SUPABASE_URL"], supabase_env["SUPABASE_SERVICE_ROLE_KEY"], "jobs", timeout_s=5
    )


def test_supabase_write_and_read(supabase_rows, jobs_rows):
    # Given a running row written through supabase-py
    supabase_rows.write(row(progress=12, stage="fetch", worker_id="gpu-1"))

    # When it is read back, both through the client and straight from PostgreSQL
    read = supabase_rows.read("job-1")
    (stored,) = jobs_rows(id="job-1")

    # Then both show what was written
    assert read is not None and read["progress"] == 12 and read["stage"] == "fetch"
    assert stored["status"] == "running" and stored["worker_id"] == "gpu-1"
    assert supabase_rows.read("job-unknown") is None


def test_supabase_check_violation_is_not_retryable(supabase_rows, jobs_rows):
    # Given a row the table's CHECK constraint refuses
    bad = row(progress=101)

    # When it is written
    with pytest.raises(RowWriteError) as caught:
        supabase_rows.write(bad)

    # Then the error says sending it again cannot help, and nothing was stored
    assert caught.value.retryable is False
    assert jobs_rows(id="job-1") == []


def test_supabase_unknown_column_is_not_retryable(supabase_rows):
    # Given a row with a column the table does not have
    # When it is written / Then it is refused for good
    with pytest.raises(RowWriteError) as caught:
        supabase_rows.write(row(gpu_temperature=71))
    assert caught.value.retryable is False


def test_supabase_outage_is_retryable(supabase_rows, supabase_server, jobs_rows):
    # Given Supabase answering 503
    # When a row is written
    with supabase_server.outage(503), pytest.raises(RowWriteError) as caught:
        supabase_rows.write(row(progress=5))

    # Then the error says a later try may pass, and the same write lands once the outage is over
    assert caught.value.retryable is True
    supabase_rows.write(row(progress=5))
    assert jobs_rows(id="job-1")[0]["progress"] == 5


def test_supabase_database_down_behind_postgrest_is_retryable(supabase_rows, postgres_server):
    # Given PostgREST up but its PostgreSQL down (it answers 503 PGRST001)
    postgres_server.stop()
    try:
        # When a row is written
        with pytest.raises(RowWriteError) as caught:
            supabase_rows.write(row(progress=5))
    finally:
        postgres_server.start()

    # Then the error says a later try may pass
    assert caught.value.retryable is True


def test_local_and_supabase_rows_follow_the_same_rules(supabase_rows, tmp_path):
    # Given the same sequence of replayed, stale and late writes sent to both stores
    local = LocalRows(tmp_path)
    writes = [
        row(attempt=1, progress=30, heartbeat_at=T2, started_at=T1, owner_id=OWNER_A),
        row(attempt=1, progress=20, heartbeat_at=T1),  # an older write, retried late
        row(attempt=1, status="requeued", error_code="preempted"),
        row(attempt=2, progress=4, heartbeat_at=T3),
        row(attempt=1, status="failed", progress=99),  # attempt 1 replayed from an outbox
        row(attempt=2, status="completed", progress=100, error_code=None),
        row(attempt=2, status="running", progress=50),  # late progress after the end
    ]

    # When both stores receive it
    for write in writes:
        local.write(write)
        supabase_rows.write(write)

    # Then both end with the same row (the Python rules mirror the table's trigger)
    fields = ("attempt", "status", "progress", "error_code", "owner_id")
    from_local, from_supabase = local.read("job-1"), supabase_rows.read("job-1")
    assert from_local is not None and from_supabase is not None
    assert {k: from_local.get(k) for k in fields} == {k: from_supabase.get(k) for k in fields}
    assert from_supabase["status"] == "completed" and from_supabase["progress"] == 100
    assert from_local["finished_at"] and from_supabase["finished_at"]


def test_a_rows_owner_is_pinned_in_both_stores(supabase_rows, tmp_path):
    # Given a row written for owner A
    local = LocalRows(tmp_path)
    for store in (local, supabase_rows):
        store.write(row(attempt=1, status="completed", progress=100, owner_id=OWNER_A))

    # When a newer attempt's write names owner B (a reused job id, a bug)
    for store in (local, supabase_rows):
        store.write(row(attempt=2, status="running", progress=3, owner_id=OWNER_B))

    # Then the write lands but the row stays in owner A's view: row-level security filters on owner_id
    for store in (local, supabase_rows):
        stored = store.read("job-1")
        assert stored is not None and stored["attempt"] == 2
        assert stored["owner_id"] == OWNER_A
