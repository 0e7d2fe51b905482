"""Fixtures for the real Redis and Supabase (PostgreSQL + PostgREST layer) test servers.

Session fixtures start their server the first time a test asks for it (so a run that needs no Redis
never starts one) and stop it at the end of the session, pass or fail. Function fixtures hand each test
a clean state: an empty Redis, an empty ``jobs`` table, no outage, an empty request log. A test that
stopped or killed a server (fault tests do) gets it started again for the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis import Redis

from tests.servers.postgres import PostgresServer
from tests.servers.postgrest import PostgrestServer
from tests.servers.redis_server import RedisServer

SUPABASE_TABLES = ("jobs",)
"""Tables emptied before each test that uses ``supabase_env``."""


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server (AOF, fsync always): ``.url``, ``.port``, ``.client()``, ``.restart(down_for)``,
    ``.stop()``, ``.kill()``, ``.start()``."""
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of the session's server, running and empty."""
    redis_server.start()  # no-op unless an earlier test left it stopped
    with redis_server.client() as client:
        client.flushall()
    yield redis_server.url
    redis_server.start()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A client of that server, closed after the test."""
    client = Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL with Supabase's roles and ``supabase/migrations/*.sql`` applied."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def supabase_server(postgres_server: PostgresServer) -> Iterator[PostgrestServer]:
    """The PostgREST-compatible layer: ``.url``, ``.service_key``, ``.outage()``, ``.requests``, ``.rows()``
    (see ``tests/servers/postgrest.py``)."""
    server = PostgrestServer(postgres_server.dsn)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def supabase_env(
    postgres_server: PostgresServer, supabase_server: PostgrestServer
) -> Iterator[dict[str, str]]:
    """``{"SUPABASE_URL": ..., "SUPABASE_SERVICE_ROLE_KEY": ...}`` for a clean project: empty tables,
    no outage, empty request log."""
    postgres_server.start()
    supabase_server.start()
    supabase_server.clear_outage()
    supabase_server.truncate(*SUPABASE_TABLES)
    supabase_server.clear_requests()
    yield {"SUPABASE_URL": supabase_server.url, "SUPABASE_SERVICE_ROLE_KEY": supabase_server.service_key}
    supabase_server.clear_outage()  # so a forgotten outage cannot leak into the next test


@pytest.fixture
def jobs_rows(
    supabase_env: dict[str, str], supabase_server: PostgrestServer
) -> Callable[..., list[dict[str, Any]]]:
    """``jobs_rows(**where)``: rows of ``jobs`` read straight from PostgreSQL (datetimes, dicts), by id."""

    def read(**where: Any) -> list[dict[str, Any]]:
        return supabase_server.rows("jobs", **where)

    return read
