"""Checkpoints on a real S3 server (SeaweedFS: signed requests, multipart) and in a local folder:
whole or nothing, integrity-checked, newest attempt first, stale attempts fenced off, cleaned up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from daemon.adapters.checkpoints import KEEP_MANIFESTS, Checkpoints, LocalBlobs, S3Blobs
from daemon.adapters.ledger import Ledger
from daemon.errors import AttemptSuperseded
from tests.fixtures_s3 import new_bucket_name


@pytest.fixture(params=["seaweedfs", "local"])
def blobs(request, tmp_path):
    if request.param == "local":
        return LocalBlobs(tmp_path / "ckpt")
    server = request.getfixturevalue("seaweed_s3")
    bucket = server.create_bucket(new_bucket_name())
    # 5 MB parts, so the 12 MB file below goes up in parts
    transfer = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    return S3Blobs(server.client(), bucket, "checkpoints", transfer)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_checkpoint_comes_back_whole_with_its_records(blobs, tmp_path):
    # Given an attempt that stored a large file and a small one and committed
    big = os.urandom(12 << 20)
    writer = Checkpoints(blobs, "job-1", attempt=3)
    writer.add("sfm.tar", write(tmp_path / "a" / "sfm.tar", big))
    writer.add("state.pt", write(tmp_path / "a" / "state.pt", b"step 10"))
    writer.commit({"sfm": {"registered": 9}})
    # When a later attempt on another machine restores
    reader = Checkpoints(blobs, "job-1", attempt=4)
    restored = reader.restore(tmp_path / "b")
    # Then it gets every file byte for byte, and the records
    assert restored is not None and restored.attempt == 3
    assert restored.files["sfm.tar"].read_bytes() == big
    assert restored.files["state.pt"].read_bytes() == b"step 10"
    assert restored.records == {"sfm": {"registered": 9}}
    # And its own next manifest still lists the restored files without uploading them again
    reader.add("state.pt", write(tmp_path / "b2" / "state.pt", b"step 20"))
    reader.commit()
    again = Checkpoints(blobs, "job-1", attempt=5).restore(tmp_path / "c")
    assert again is not None and again.attempt == 4
    assert again.files["sfm.tar"].read_bytes() == big and again.files["state.pt"].read_bytes() == b"step 20"


def test_uncommitted_files_are_invisible(blobs, tmp_path):
    writer = Checkpoints(blobs, "job-2", attempt=1)
    writer.add("state.pt", write(tmp_path / "state.pt", b"half"))
    # (the attempt died before its manifest)
    assert Checkpoints(blobs, "job-2", attempt=2).restore(tmp_path / "r") is None


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(blobs, tmp_path):
    writer = Checkpoints(blobs, "job-3", attempt=1)
    writer.add("state.pt", write(tmp_path / "s1", b"step 10"))
    writer.commit()
    writer.add("state.pt", write(tmp_path / "s2", b"step 20"))
    writer.commit()
    # Given the newest state file replaced by other bytes (bit rot, a bad copy)
    newest = writer.entries["state.pt"].key
    blobs.put_bytes(newest, b"step 2X")
    # When restored, then the SHA-256 check rejects it and the older checkpoint is used
    restored = Checkpoints(blobs, "job-3", attempt=2).restore(tmp_path / "r")
    assert restored is not None and restored.files["state.pt"].read_bytes() == b"step 10"


def test_a_newer_attempts_checkpoint_outranks_a_stale_attempts_later_one(blobs, tmp_path):
    # Given attempt 2 (current) and attempt 1 (came back from the dead) both writing
    current = Checkpoints(blobs, "job-4", attempt=2)
    current.add("state.pt", write(tmp_path / "s2", b"attempt 2"))
    current.commit()
    stale = Checkpoints(blobs, "job-4", attempt=1)
    for step in range(3):  # more writes, so higher sequence numbers
        stale.add("state.pt", write(tmp_path / f"s1-{step}", b"attempt 1"))
        stale.commit()
    # Then a resume takes attempt 2's, and the stale attempt's cleanup left it intact
    restored = Checkpoints(blobs, "job-4", attempt=3).restore(tmp_path / "r")
    assert restored is not None and restored.files["state.pt"].read_bytes() == b"attempt 2"


def test_old_checkpoints_are_collected_and_all_deleted_at_the_end(blobs, tmp_path):
    writer = Checkpoints(blobs, "job-5", attempt=1)
    writer.add("images.tar", write(tmp_path / "i", b"images"))
    for step in range(5):
        writer.add("state.pt", write(tmp_path / f"s{step}", f"step {step}".encode()))
        writer.commit()
    # Only the newest manifests and the files they use are kept
    assert len(writer.manifests()) == KEEP_MANIFESTS
    kept = blobs.keys("job-5/blobs/")
    assert len(kept) == 1 + KEEP_MANIFESTS  # images.tar, and one state per kept manifest
    # And the job's end deletes everything
    writer.delete_all()
    assert blobs.keys("job-5/") == []


def test_a_stale_attempt_cannot_commit(redis_url, tmp_path):
    from daemon.adapters.runtime import redis_client

    ledger = Ledger(redis_client(redis_url))
    first = ledger.begin_attempt("job-6", rq_id="job-6", worker="w1")
    second = ledger.begin_attempt("job-6", rq_id="job-6", worker="w2")
    blobs = LocalBlobs(tmp_path / "ckpt")
    stale = Checkpoints(blobs, "job-6", first, fence=lambda: ledger.check_current("job-6", first))
    stale.add("state.pt", write(tmp_path / "s", b"old"))
    with pytest.raises(AttemptSuperseded):
        stale.commit()
    assert stale.manifests() == []
    # And only the current attempt can claim completion, once
    assert not ledger.claim_completion("job-6", first)
    assert ledger.claim_completion("job-6", second)
    assert not ledger.claim_completion("job-6", second)
    assert not ledger.is_current("job-6", second)  # completed: nothing may write any more
