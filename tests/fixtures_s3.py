"""Pytest plugin: S3-compatible servers for the session, and a fresh bucket per test.

- `moto_s3`    (session) a `MotoS3Server`, started on first use, stopped at session end.
- `seaweed_s3` (session) a `SeaweedS3Server` that checks signatures and presigned-URL expiry.
- `s3_bucket`  (function) `(moto_s3, bucket_name)` with a new, empty bucket for each test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.servers.s3 import MotoS3Server, SeaweedS3Server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3Server]:
    server = MotoS3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed_s3() -> Iterator[SeaweedS3Server]:
    server = SeaweedS3Server()
    server.start()
    try:
        server.check_rejects_bad_signature()
        yield server
    finally:
        server.stop()


def new_bucket_name() -> str:
    """A name valid on AWS and SeaweedFS alike (lower-case, 3-63 chars), unique per call."""
    return f"test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def s3_bucket(moto_s3: MotoS3Server) -> tuple[MotoS3Server, str]:
    return moto_s3, moto_s3.create_bucket(new_bucket_name())
