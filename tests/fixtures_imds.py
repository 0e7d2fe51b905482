"""Instance metadata fixtures: one fake IMDS per test session, its state reset for every test, and the
address of a service that is not there (what the daemon meets off EC2)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.servers.imds import FakeIMDS


@pytest.fixture(scope="session")
def imds_server_session() -> Iterator[FakeIMDS]:
    """A started fake IMDS shared by the session."""
    server = FakeIMDS().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def imds(imds_server_session: FakeIMDS) -> Iterator[FakeIMDS]:
    """The session fake with no notices, no tokens, no overrides, up, and an empty request log."""
    imds_server_session.reset()
    yield imds_server_session
    imds_server_session.reset()


@pytest.fixture
def no_imds_url() -> str:
    """A loopback URL where nothing listens (connections are refused): a machine that is not on EC2."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
