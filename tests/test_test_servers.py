"""The test servers behave like the real things, as seen through the real redis-py and supabase-py clients.

Also pins down the ``jobs`` migration's trigger rules (fencing, monotonic progress, final terminal status)
through the HTTP layer, since that is how the daemon will meet them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest
import redis
from postgrest.base_request_builder import APIResponse
from postgrest.exceptions import APIError
from postgrest.types import ReturnMethod

from supabase import Client, create_client
from tests.servers.postgres import PostgresServer
from tests.servers.postgrest import PostgrestServer
from tests.servers.redis_server import RedisServer

Rows = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def supabase(supabase_env: dict[str, str]) -> Client:
    """A real supabase-py client on the private project, as the daemon will build it."""
    return create_client(supabase_env["SUPABASE_URL"], supabase_env["SUPABASE_SERVICE_ROLE_KEY"])


def data(result: APIResponse) -> list[dict[str, Any]]:
    """A response's rows, typed for the assertions below."""
    return cast(list[dict[str, Any]], result.data)


def job(job_id: str = "job-1", **fields: Any) -> dict[str, Any]:
    return {"id": job_id, "kind": "splat", **fields}


# -- Redis ---------------------------------------------------------------------------------------------


def test_redis_is_private_and_starts_empty(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_server.port != 6379
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0, f"left by an earlier test: {sorted(client.keys('*'))[:20]}"
        client.set("left-behind", "1")  # the next test's redis_url must not see this


def test_redis_restart_keeps_data_and_the_client_reconnects(
    redis_server: RedisServer, redis_url: str
) -> None:
    # Given a key written through a long-lived client
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    assert client.dbsize() == 0
    client.set("job:1", "queued")

    # When Redis goes down: clients get connection errors
    redis_server.stop()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.get("job:1")

    # Then after it comes back on the same port, the same client object reconnects and the key survived
    redis_server.start()
    assert client.get("job:1") == b"queued"
    client.close()


def test_redis_restart_with_downtime_and_kill_keep_acknowledged_writes(
    redis_server: RedisServer, redis_url: str
) -> None:
    client = redis_server.client()
    client.rpush("queue", "a", "b")
    redis_server.restart(down_for=0.2)
    client.rpush("queue", "c")
    redis_server.kill()  # a crash: appendfsync always means nothing acknowledged is lost
    redis_server.start()
    assert client.lrange("queue", 0, -1) == [b"a", b"b", b"c"]
    client.close()


def test_redis_url_restarts_a_server_a_test_left_stopped(redis_server: RedisServer, redis_url: str) -> None:
    # Given a test that leaves the session's server killed
    client = redis_server.client(socket_connect_timeout=5)
    redis_server.kill()
    assert not redis_server.running
    with pytest.raises(redis.ConnectionError):
        client.ping()
    # When the fixture's set-up and tear-down step runs (start: a no-op on a running server)
    redis_server.start()
    port = redis_server.port
    # Then the server answers again, on the same port, and a second start changes nothing
    assert client.ping() is True
    redis_server.start()
    assert redis_server.running and redis_server.port == port and client.ping() is True
    client.close()


# -- PostgreSQL ----------------------------------------------------------------------------------------


def test_postgres_is_private_and_migrated(postgres_server: PostgresServer) -> None:
    assert postgres_server.port != 5432
    with postgres_server.connect() as conn:
        rls = conn.execute("select relrowsecurity from pg_class where oid = 'public.jobs'::regclass")
        assert rls.fetchone() == (True,)
        policies = conn.execute("select polname from pg_policy where polrelid = 'public.jobs'::regclass")
        assert policies.fetchall() == [("jobs_owner_read",)]


# -- PostgREST layer: the supabase-py calls the daemon makes -------------------------------------------


def test_upsert_inserts_then_updates_only_the_payload_columns(supabase: Client, jobs_rows: Rows) -> None:
    # Given a job created by an upsert
    created = supabase.table("jobs").upsert(job(stage="download", worker_id="w1"), on_conflict="id").execute()
    assert data(created)[0]["stage"] == "download"

    # When another upsert carries only some columns
    supabase.table("jobs").upsert(job(progress=40), on_conflict="id").execute()

    # Then those change and the others keep their values
    (row,) = jobs_rows(id="job-1")
    assert (row["progress"], row["stage"], row["worker_id"]) == (40, "download", "w1")


def test_upsert_minimal_returns_nothing_and_representation_returns_the_row(
    supabase: Client, supabase_server: PostgrestServer
) -> None:
    minimal = supabase.table("jobs").upsert(job(), on_conflict="id", returning=ReturnMethod.minimal).execute()
    full = supabase.table("jobs").upsert(job(progress=5), on_conflict="id").execute()

    assert data(minimal) == []
    assert [(row["id"], row["progress"]) for row in data(full)] == [("job-1", 5)]
    posts = [entry for entry in supabase_server.requests if entry.method == "POST"]
    assert [(entry.status, entry.query) for entry in posts] == [(201, "on_conflict=id")] * 2
    assert "return=minimal" in (posts[0].prefer or "")
    assert "resolution=merge-duplicates" in (posts[1].prefer or "")


def test_upsert_accepts_a_list_of_rows(supabase: Client, jobs_rows: Rows) -> None:
    rows = [job("a", progress=1), job("b", progress=2)]
    result = supabase.table("jobs").upsert(rows, on_conflict="id").execute()
    assert sorted(row["id"] for row in data(result)) == ["a", "b"]
    assert [row["progress"] for row in jobs_rows()] == [1, 2]


def test_wire_format_matches_postgrest(
    supabase_env: dict[str, str], supabase_server: PostgrestServer
) -> None:
    key = supabase_env["SUPABASE_SERVICE_ROLE_KEY"]
    headers = {"apikey": key, "Authorization": f"Bearer {key}"}
    url = f"{supabase_env['SUPABASE_URL']}/rest/v1/jobs"
    with httpx.Client(headers=headers) as http:
        post = http.post(url, json=job(), headers={"Prefer": "return=minimal"})
        patch = http.patch(f"{url}?id=eq.job-1", json={"progress": 3}, headers={"Prefer": "return=minimal"})
        get = http.get(f"{url}?select=id,progress", headers={"Prefer": "count=exact"})

    assert (post.status_code, post.content, post.headers["content-range"]) == (201, b"", "*/*")
    assert post.headers["preference-applied"] == "return=minimal"
    assert (patch.status_code, patch.headers["content-range"]) == (204, "0-0/*")
    assert (get.status_code, get.headers["content-range"], get.json()) == (
        200,
        "0-0/1",
        [{"id": "job-1", "progress": 3}],
    )


def test_insert_of_an_existing_id_is_a_409(supabase: Client) -> None:
    supabase.table("jobs").insert(job()).execute()
    with pytest.raises(APIError) as error:
        supabase.table("jobs").insert(job()).execute()
    assert error.value.code == "23505"


def test_select_filters_order_and_limit(supabase: Client) -> None:
    supabase.table("jobs").insert(
        [job("a", progress=10), job("b", progress=50), job("c", progress=90)]
    ).execute()
    supabase.table("jobs").update({"status": "running"}).in_("id", ["a", "b"]).execute()
    jobs = supabase.table("jobs")

    assert data(jobs.select("*").eq("id", "b").execute())[0]["progress"] == 50
    assert data(jobs.select("id,status").eq("id", "a").eq("status", "running").execute()) == [
        {"id": "a", "status": "running"}
    ]
    running = jobs.select("id").in_("status", ["running", "failed"]).order("id").execute()
    assert [row["id"] for row in data(running)] == ["a", "b"]
    assert [row["id"] for row in data(jobs.select("id").neq("id", "b").order("id").execute())] == ["a", "c"]
    assert [row["id"] for row in data(jobs.select("id").gt("progress", 10).lt("progress", 90).execute())] == [
        "b"
    ]
    top = jobs.select("id").order("progress", desc=True).limit(2).execute()
    assert [row["id"] for row in data(top)] == ["c", "b"]
    assert data(jobs.select("*").eq("id", "missing").execute()) == []


def test_update_and_delete_by_id(supabase: Client, jobs_rows: Rows) -> None:
    supabase.table("jobs").insert([job("a"), job("b")]).execute()

    updated = supabase.table("jobs").update({"stage": "train"}).eq("id", "a").execute()
    missing = supabase.table("jobs").update({"stage": "train"}).eq("id", "nope").execute()
    deleted = supabase.table("jobs").delete().eq("id", "b").execute()

    assert [row["stage"] for row in data(updated)] == ["train"]
    assert data(missing) == []
    assert [row["id"] for row in data(deleted)] == ["b"]
    assert [row["id"] for row in jobs_rows()] == ["a"]


def test_jsonb_and_timestamps_round_trip(supabase: Client, jobs_rows: Rows) -> None:
    outputs = {"ply": "s3://bucket/job-1/out.ply", "metrics": {"psnr": 27.5}, "views": [1, 2]}
    result = (
        supabase.table("jobs").upsert(job(outputs=outputs, heartbeat_at="2026-01-02T03:04:05Z")).execute()
    )

    assert data(result)[0]["outputs"] == outputs
    assert data(result)[0]["heartbeat_at"] == "2026-01-02T03:04:05+00:00"
    assert jobs_rows()[0]["heartbeat_at"].isoformat() == "2026-01-02T03:04:05+00:00"


def test_constraint_violations_are_api_errors_with_the_sqlstate(supabase: Client) -> None:
    supabase.table("jobs").insert(job()).execute()
    cases = {
        "23514": lambda: supabase.table("jobs").update({"progress": 101}).eq("id", "job-1").execute(),
        "22P02": lambda: supabase.table("jobs").update({"progress": 42.5}).eq("id", "job-1").execute(),
        "23502": lambda: supabase.table("jobs").upsert({"id": "job-1", "progress": 5}).execute(),  # no kind
        "PGRST204": lambda: supabase.table("jobs").update({"no_such_column": 1}).eq("id", "job-1").execute(),
        "42703": lambda: supabase.table("jobs").select("id").eq("no_such_column", 1).execute(),
        "PGRST205": lambda: supabase.table("jobs; drop table jobs").select("*").execute(),
    }
    codes = {}
    for expected, call in cases.items():
        with pytest.raises(APIError) as error:
            call()
        codes[expected] = error.value.code
    assert codes == {code: code for code in cases}


def test_check_violation_names_the_constraint(supabase: Client, supabase_server: PostgrestServer) -> None:
    supabase.table("jobs").insert(job()).execute()
    with pytest.raises(APIError) as error:
        supabase.table("jobs").upsert(job(progress=101), returning=ReturnMethod.minimal).execute()
    assert "jobs_progress_check" in (error.value.message or "")
    assert supabase_server.requests[-1].status == 400


def test_wrong_key_is_rejected_with_401(
    supabase_env: dict[str, str], supabase_server: PostgrestServer
) -> None:
    intruder = create_client(supabase_env["SUPABASE_URL"], "not-the-key")
    with pytest.raises(APIError) as error:
        intruder.table("jobs").insert(job()).execute()
    # The gateway's 401 body carries no "code" (as on the real platform), only a message.
    assert (error.value.code, error.value.message) == (None, "Invalid API key")

    # A right apikey with a forged bearer token is refused by PostgREST itself.
    good = supabase_env["SUPABASE_SERVICE_ROLE_KEY"]
    forged = good[: good.rindex(".")] + ".c2lnbmF0dXJl"
    response = httpx.get(
        f"{supabase_env['SUPABASE_URL']}/rest/v1/jobs",
        headers={"apikey": good, "Authorization": f"Bearer {forged}"},
    )
    assert (response.status_code, response.json()["code"]) == (401, "PGRST301")
    assert [entry.status for entry in supabase_server.requests] == [401, 401]


def test_anon_and_users_are_held_by_row_level_security(
    supabase: Client, supabase_env: dict[str, str], supabase_server: PostgrestServer
) -> None:
    owner = "2b1c9a3e-0d7f-4f6e-9a51-6a1f0c1e2d3b"
    supabase.table("jobs").insert([job("mine", owner_id=owner), job("theirs")]).execute()
    anon = create_client(supabase_env["SUPABASE_URL"], supabase_server.anon_key)

    assert data(anon.table("jobs").select("id").execute()) == []
    with pytest.raises(APIError) as error:
        anon.table("jobs").insert(job("sneaky")).execute()
    assert error.value.code == "42501"

    anon.postgrest.auth(supabase_server.user_token(owner))
    assert [row["id"] for row in data(anon.table("jobs").select("id").execute())] == ["mine"]


def test_a_restarted_http_server_keeps_its_url(supabase_server: PostgrestServer) -> None:
    # Given the running PostgREST layer (its HTTP plumbing is tests/servers/loopback.py, as for all of them)
    url, headers = supabase_server.url, {"apikey": supabase_server.service_key}
    assert httpx.get(url + "/rest/v1/jobs", headers=headers).status_code == 200

    # When it stops, nothing answers; when it starts again, it answers on the same URL
    supabase_server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/rest/v1/jobs", headers=headers)
    supabase_server.start()
    assert supabase_server.url == url
    assert httpx.get(url + "/rest/v1/jobs", headers=headers).status_code == 200


def test_outage_answers_503_then_recovers(supabase: Client, supabase_server: PostgrestServer) -> None:
    # Given an outage: writes fail (supabase-py never retries them), and the attempts are logged
    with supabase_server.outage(status=503):
        with pytest.raises(APIError) as error:
            supabase.table("jobs").upsert(job(), returning=ReturnMethod.minimal).execute()
        assert error.value.code == "503"

    # Then once cleared, the same client writes again
    supabase.table("jobs").upsert(job(), returning=ReturnMethod.minimal).execute()
    assert [(entry.method, entry.status) for entry in supabase_server.requests] == [
        ("POST", 503),
        ("POST", 201),
    ]


def test_outage_of_n_requests_ends_by_itself(supabase: Client, supabase_server: PostgrestServer) -> None:
    # Given an outage of two requests
    supabase_server.outage(status=502, requests=2)
    # When a client writes three times
    for _ in range(2):
        with pytest.raises(APIError):
            supabase.table("jobs").insert(job()).execute()
    # Then the third write lands, with no clear_outage()
    assert data(supabase.table("jobs").insert(job()).execute())[0]["id"] == "job-1"
    assert [entry.status for entry in supabase_server.requests] == [502, 502, 201]


# -- the jobs migration's trigger rules, through the HTTP layer ----------------------------------------


def write(supabase: Client, **fields: Any) -> list[dict[str, Any]]:
    """An upsert as the daemon sends it; returns the rows actually written (empty when the trigger skips)."""
    return data(supabase.table("jobs").upsert(job(**fields), on_conflict="id").execute())


def test_a_write_from_an_older_attempt_is_dropped(supabase: Client, jobs_rows: Rows) -> None:
    write(supabase, attempt=2, status="running", progress=10)

    assert write(supabase, attempt=1, status="failed", progress=90) == []

    (row,) = jobs_rows()
    assert (row["attempt"], row["status"], row["progress"]) == (2, "running", 10)


def test_progress_never_goes_backwards_within_an_attempt(supabase: Client, jobs_rows: Rows) -> None:
    write(supabase, attempt=1, status="running", progress=50)

    written = write(supabase, attempt=1, status="running", progress=20, stage="train")
    supabase.table("jobs").update({"progress": 30}).eq("id", "job-1").execute()

    assert (written[0]["progress"], written[0]["stage"]) == (50, "train")  # the write lands, progress clamped
    assert jobs_rows()[0]["progress"] == 50


def test_terminal_status_is_final_for_its_attempt(supabase: Client, jobs_rows: Rows) -> None:
    write(supabase, attempt=1, status="running", progress=70)
    write(supabase, attempt=1, status="completed", progress=100)

    assert write(supabase, attempt=1, status="running", progress=80) == []
    assert data(supabase.table("jobs").update({"status": "failed"}).eq("id", "job-1").execute()) == []
    assert jobs_rows()[0]["status"] == "completed"


def test_finished_at_is_set_on_terminal_status_and_cleared_by_a_new_attempt(
    supabase: Client, jobs_rows: Rows
) -> None:
    write(supabase, attempt=1, status="running")
    assert jobs_rows()[0]["finished_at"] is None

    write(supabase, attempt=1, status="failed", error_code="CUDA_OOM")
    assert jobs_rows()[0]["finished_at"] is not None

    retried = write(supabase, attempt=2, status="running", progress=0)
    assert (retried[0]["finished_at"], retried[0]["progress"]) == (None, 0)


def test_finished_at_is_set_when_a_job_is_first_written_terminal(supabase: Client, jobs_rows: Rows) -> None:
    write(supabase, attempt=0, status="canceled")
    assert jobs_rows()[0]["finished_at"] is not None


def test_a_new_attempt_after_a_crash_starts_its_progress_afresh(supabase: Client) -> None:
    write(supabase, attempt=1, status="running", progress=80)  # the worker dies here; no terminal write
    assert write(supabase, attempt=2, status="running", progress=5)[0]["progress"] == 5


def test_stopping_postgres_gives_503_then_recovers(
    supabase: Client, postgres_server: PostgresServer, supabase_server: PostgrestServer
) -> None:
    postgres_server.stop()
    try:
        with pytest.raises(APIError) as error:
            supabase.table("jobs").insert(job()).execute()
        assert error.value.code == "PGRST001"
    finally:
        postgres_server.start()
    assert data(supabase.table("jobs").insert(job()).execute())[0]["id"] == "job-1"
