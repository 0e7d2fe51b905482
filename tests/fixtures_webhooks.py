"""Webhook receiver fixtures: one real server per test session, its state cleared for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.webhook_receiver import WebhookReceiver


@pytest.fixture(scope="session")
def webhook_server_session() -> Iterator[WebhookReceiver]:
    """A started receiver shared by the session (its `.secret` stays the same throughout)."""
    receiver = WebhookReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def webhook_receiver(webhook_server_session: WebhookReceiver) -> Iterator[WebhookReceiver]:
    """The session receiver with no recorded requests and no planned failures."""
    webhook_server_session.reset()
    yield webhook_server_session
    webhook_server_session.reset()  # also releases a request still stalled by this test
