"""Inputs as the handlers get them (daemon/adapters/runtime.py `InputSource`): a spec that gives an
input's SHA-256 gets exactly those bytes, or the job is refused with `checksum_mismatch`; an S3 input
meets the job's first-bytes check as a download does (issue 13)."""

from __future__ import annotations

import hashlib

import boto3
import pytest

from daemon.adapters.runtime import Runtime
from daemon.config import load_settings
from daemon.errors import InputError
from daemon.handlers.sniff import describe_content, sniff_video
from daemon.spec.model import InputRef
from tests.fixtures_daemon import sample_jpeg
from tests.test_worker_faults import enqueue, wait_status


def test_a_url_input_is_checked_against_its_sha256(daemon_env, file_server, tmp_path):
    # Given a photo served over HTTP, and a spec that names its SHA-256 (in capitals, as some clients do)
    data = sample_jpeg(5)
    url = file_server.add("checksum-url.jpg", data)
    source = Runtime(load_settings(daemon_env)).input_source()
    good = InputRef(url=url, sha256=hashlib.sha256(data).hexdigest().upper())
    # When it is fetched, Then the bytes arrive
    assert source.fetch(good, tmp_path / "good.jpg", None).read_bytes() == data
    # And when the spec names another SHA-256, the input is refused by name, for good, and not kept
    bad = InputRef(url=url, name="photo.jpg", sha256="0" * 64)
    with pytest.raises(InputError) as refused:
        source.fetch(bad, tmp_path / "bad.jpg", None)
    assert refused.value.code == "checksum_mismatch" and not refused.value.retryable
    assert refused.value.message.startswith("photo.jpg: its SHA-256 is ")
    assert not (tmp_path / "bad.jpg").exists()


@pytest.fixture
def upload(full_env, monkeypatch):
    """Put an object in the test bucket; this process then holds the workers' S3 credentials."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.setenv(name, full_env[name])
    s3 = boto3.client(
        "s3",
        endpoint_url=full_env["S3_ENDPOINT_URL"],
        aws_access_key_id=full_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=full_env["AWS_SECRET_ACCESS_KEY"],
        region_name=full_env["AWS_REGION"],
    )
    return lambda key, body: s3.put_object(Bucket=full_env["S3_BUCKET"], Key=key, Body=body)


def test_an_s3_input_is_checked_against_its_sha256(full_env, tmp_path, upload):
    # Given a photo uploaded to the bucket
    data = sample_jpeg(6)
    upload("uploads/u1/c.jpg", data)
    source = Runtime(load_settings(full_env)).input_source()
    # When it is read with its true SHA-256, Then the bytes arrive; with another, it is refused
    good = InputRef(s3_key="uploads/u1/c.jpg", sha256=hashlib.sha256(data).hexdigest())
    assert source.fetch(good, tmp_path / "good.jpg", None).read_bytes() == data
    with pytest.raises(InputError) as refused:
        source.fetch(InputRef(s3_key="uploads/u1/c.jpg", sha256="f" * 64), tmp_path / "bad.jpg", None)
    assert refused.value.code == "checksum_mismatch"
    assert refused.value.message.startswith("uploads/u1/c.jpg: its SHA-256 is ")
    assert not (tmp_path / "bad.jpg").exists()


def test_an_s3_input_meets_the_jobs_first_bytes_check_as_a_download_does(full_env, tmp_path, upload):
    # Given a web page stored in the bucket under a video's name, and a job that takes only videos
    upload("uploads/u1/clip.mp4", b"<!doctype html><html></html>")
    source = Runtime(load_settings(full_env)).input_source()
    seen: list[bytes] = []

    def videos_only(content_type: str, head: bytes) -> bool:
        seen.append(head)
        if sniff_video(head) is None:
            raise InputError(f"{describe_content(head)}, not a video", code="not_a_video")
        return True

    # When it is read for that job
    with pytest.raises(InputError) as refused:
        source.fetch(InputRef(s3_key="uploads/u1/clip.mp4"), tmp_path / "clip.mp4", videos_only)
    # Then the job's check saw its first bytes and refused it, and the file is not kept
    assert seen == [b"<!doctype html><html></html>"]
    assert refused.value.code == "not_a_video" and "HTML" in refused.value.message
    assert not (tmp_path / "clip.mp4").exists()


@pytest.mark.slow
def test_a_jobs_inputs_together_stay_under_the_job_input_budget(
    daemon_env, file_server, start_worker, tmp_path
):
    # Given a budget of 5 kB for all of a job's inputs, and a job of three photos of about 2 kB each
    env = {**daemon_env, "JOB_INPUT_MAX_BYTES": "5000"}
    photos = [sample_jpeg(seed, size=(96, 72)) for seed in (1, 2, 3)]
    assert sum(len(p) for p in photos[:2]) <= 5000 < sum(len(p) for p in photos)
    urls = [file_server.add(f"budget-{n}.jpg", data) for n, data in enumerate(photos)]
    enqueue(env, {"spec_version": 1, "job_id": "budget-1", "kind": "inspect", "params": {},
                  "inputs": [{"url": url, "name": f"p{n}.jpg"} for n, url in enumerate(urls)]})  # fmt: skip
    # When a worker runs it
    worker = start_worker(env)
    row = wait_status(tmp_path, "budget-1", "failed", worker=worker)
    # Then the third download is stopped at the budget, and the job fails for good saying so
    assert row["error_code"] == "inputs_too_large"
    assert "JOB_INPUT_MAX_BYTES = 5000 bytes at input 3 of 3 (p2.jpg;" in row["error_message"]
    # And the worker serves on: a job within the budget completes
    enqueue(env, {"spec_version": 1, "job_id": "budget-2", "kind": "inspect", "params": {},
                  "inputs": [{"url": urls[0]}]})  # fmt: skip
    wait_status(tmp_path, "budget-2", "completed", worker=worker)


@pytest.mark.slow
def test_an_inputs_declared_content_type_is_enforced(daemon_env, file_server, start_worker, tmp_path):
    # Given a job whose spec says its input is a JPEG, though the URL serves a web page with a JPEG's
    # content type, and a job whose JPEG is declared as image/jpg (an alias clients use)
    page = file_server.add("login.jpg", b"<!doctype html><html><body>Sign in</body></html>")
    photo = file_server.add("declared.jpg", sample_jpeg(4))
    enqueue(daemon_env, {"spec_version": 1, "job_id": "declared-1", "kind": "inspect", "params": {},
                         "inputs": [{"url": page, "content_type": "image/jpeg"}]})  # fmt: skip
    enqueue(daemon_env, {"spec_version": 1, "job_id": "declared-2", "kind": "inspect", "params": {},
                         "inputs": [{"url": photo, "content_type": "image/jpg"}]})  # fmt: skip
    # When a worker runs them
    worker = start_worker(daemon_env)
    # Then the first fails for good, saying what the file is, and the second completes
    row = wait_status(tmp_path, "declared-1", "failed", worker=worker)
    assert row["error_code"] == "content_type_mismatch"
    assert row["error_message"].endswith("the spec says image/jpeg, the file is an HTML page")
    wait_status(tmp_path, "declared-2", "completed", worker=worker)
