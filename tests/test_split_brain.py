"""Split brain: two attempts of one job upload the same output, the older one presumed dead but still
running. Whatever the interleaving, the newer attempt's object is what stays at the key, the stale
attempt stops (AttemptSuperseded), and neither leaves an incomplete upload behind. Real Redis for the
ledger (the fence), real S3 (moto) for the conditional writes.

moto honours If-Match and If-None-Match on PutObject, and If-None-Match on CompleteMultipartUpload, but
ignores If-Match there (AWS honours both): so the overwrite-a-previous-run case runs on one-part writes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from redis import Redis

from daemon.adapters.ledger import Ledger
from daemon.adapters.storage import LocalStore, S3Store
from daemon.errors import AttemptSuperseded
from tests.fixtures_s3 import new_bucket_name
from tests.servers.s3 import MotoS3Server
from tests.test_storage import MiB, store_on, write

JOB = "split-1"


def fence(ledger: Ledger, attempt: int, after_check: Callable[[], None] | None = None) -> Callable[[], None]:
    """The ledger's fence for `attempt`; `after_check` runs once right after the first check passes:
    the worst moment for another attempt to step in."""
    pending = [after_check] if after_check else []

    def check() -> None:
        ledger.check_current(JOB, attempt)
        while pending:
            pending.pop()()

    return check


@pytest.fixture
def s3(moto_s3: MotoS3Server) -> tuple[S3Store, str]:
    bucket = moto_s3.create_bucket(new_bucket_name())
    return store_on(moto_s3, bucket), bucket


def objects(store: S3Store, bucket: str, prefix: str) -> list[str]:
    listed = store.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def body(store: S3Store, bucket: str, key: str) -> bytes:
    return bytes(store.client.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.mark.parametrize("size", [64 * 1024, 6 * MiB], ids=["one-part", "multipart"])
def test_a_newer_attempt_publishing_between_the_stale_ones_check_and_write_wins(
    s3: tuple[S3Store, str], redis: Redis, tmp_path: Path, size: int
) -> None:
    # Given attempt 1, presumed dead, uploading its output; it passed its fence and is about to write
    store, bucket = s3
    ledger = Ledger(redis)
    ledger.begin_attempt(JOB, rq_id=JOB, worker="gpu-a")
    stale, fresh = os.urandom(size), os.urandom(size)

    def attempt_2_runs() -> None:
        # When, at that moment, attempt 2 starts on another instance and publishes the same output
        ledger.begin_attempt(JOB, rq_id=JOB, worker="gpu-b")
        store.put_file(
            JOB, "scene.ply", write(tmp_path / "fresh.ply", fresh), "model/ply", fence=fence(ledger, 2)
        )

    with pytest.raises(AttemptSuperseded):
        store.put_file(
            JOB,
            "scene.ply",
            write(tmp_path / "stale.ply", stale),
            "model/ply",
            fence=fence(ledger, 1, attempt_2_runs),
        )

    # Then the stale write never landed: the key holds attempt 2's bytes, and no upload is left open
    assert body(store, bucket, store.key_for(JOB, "scene.ply")) == fresh
    assert objects(store, bucket, "") == [store.key_for(JOB, "scene.ply")]
    assert store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_stale_write_over_an_earlier_runs_object_is_refused_too(
    s3: tuple[S3Store, str], redis: Redis, tmp_path: Path
) -> None:
    # Given the output of an earlier run at the key, and attempt 1 about to replace it, past its fence
    store, bucket = s3
    key = store.key_for(JOB, "scene.ply")
    store.client.put_object(Bucket=bucket, Key=key, Body=b"last week's run")
    ledger = Ledger(redis)
    ledger.begin_attempt(JOB, rq_id=JOB, worker="gpu-a")
    fresh = os.urandom(4096)

    def attempt_2_runs() -> None:
        # When attempt 2 starts elsewhere and replaces it first
        ledger.begin_attempt(JOB, rq_id=JOB, worker="gpu-b")
        store.put_file(
            JOB, "scene.ply", write(tmp_path / "fresh.ply", fresh), "model/ply", fence=fence(ledger, 2)
        )

    with pytest.raises(AttemptSuperseded):
        store.put_file(
            JOB,
            "scene.ply",
            write(tmp_path / "stale.ply", b"stale"),
            "model/ply",
            fence=fence(ledger, 1, attempt_2_runs),
        )

    # Then attempt 1's write (If-Match the earlier run's ETag) was refused: attempt 2's bytes stand
    assert body(store, bucket, key) == fresh


def test_a_stale_attempt_whose_upload_outlasted_its_lease_does_not_overwrite(
    s3: tuple[S3Store, str], redis: Redis, tmp_path: Path
) -> None:
    # Given attempt 2 already published while attempt 1's long upload was still going
    store, bucket = s3
    ledger = Ledger(redis)
    ledger.begin_attempt(JOB, rq_id=JOB, worker="gpu-a")
    ledger.begin_attempt(JOB, rq_id=JOB, worker="gpu-b")
    fresh = os.urandom(1024)
    store.put_file(
        JOB, "scene.ply", write(tmp_path / "fresh.ply", fresh), "model/ply", fence=fence(ledger, 2)
    )

    # When attempt 1's upload finishes and it publishes
    with pytest.raises(AttemptSuperseded):
        store.put_file(
            JOB, "scene.ply", write(tmp_path / "stale.ply", b"stale"), "model/ply", fence=fence(ledger, 1)
        )

    # Then attempt 2's object stays
    assert body(store, bucket, store.key_for(JOB, "scene.ply")) == fresh


def test_a_current_attempt_that_loses_a_race_to_a_stale_copy_reads_again_and_wins(
    s3: tuple[S3Store, str], redis: Redis, tmp_path: Path
) -> None:
    # Given attempt 2 (current) about to write, and attempt 1's write landing just then (it had read
    # the key and passed its fence before attempt 2 began)
    store, bucket = s3
    ledger = Ledger(redis)
    ledger.begin_attempt(JOB, rq_id=JOB, worker="gpu-a")
    ledger.begin_attempt(JOB, rq_id=JOB, worker="gpu-b")
    key = store.key_for(JOB, "scene.ply")

    def stale_write_lands() -> None:
        store.client.put_object(Bucket=bucket, Key=key, Body=b"late stale bytes")

    fresh = os.urandom(2048)
    # When attempt 2 publishes
    stored = store.put_file(
        JOB,
        "scene.ply",
        write(tmp_path / "fresh.ply", fresh),
        "model/ply",
        fence=fence(ledger, 2, stale_write_lands),
    )

    # Then its first write was refused (the key changed), it read the key again and its bytes stand
    assert body(store, bucket, key) == fresh
    assert stored.size == len(fresh)
    head = store.client.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "model/ply"


def test_local_store_fences_right_before_its_rename(redis: Redis, tmp_path: Path) -> None:
    # Given a local output written by attempt 2, and attempt 1 (superseded) writing the same name
    ledger = Ledger(redis)
    ledger.begin_attempt(JOB, rq_id=JOB, worker="a")
    ledger.begin_attempt(JOB, rq_id=JOB, worker="b")
    store = LocalStore(tmp_path / "out")
    store.put_file(JOB, "a.txt", write(tmp_path / "2", b"fresh"), "text/plain", fence=fence(ledger, 2))

    # When attempt 1 writes
    with pytest.raises(AttemptSuperseded):
        store.put_file(JOB, "a.txt", write(tmp_path / "1", b"stale"), "text/plain", fence=fence(ledger, 1))

    # Then the file is attempt 2's and no temporary file is left
    assert (tmp_path / "out" / JOB / "a.txt").read_bytes() == b"fresh"
    assert sorted(p.name for p in (tmp_path / "out" / JOB).iterdir()) == ["a.txt"]
