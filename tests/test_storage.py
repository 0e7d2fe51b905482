"""daemon.adapters.storage: the local directory, S3 (moto and SeaweedFS) and presigned PUT URLs (SeaweedFS).

moto is used where S3 semantics matter; SeaweedFS where signatures and presigned-URL expiry matter,
since moto checks neither (DESIGN §6).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import threading
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from daemon.adapters.aws import s3_client
from daemon.adapters.fetch import FetchPolicy
from daemon.adapters.runtime import Runtime
from daemon.adapters.storage import LocalStore, PresignedPutStore, S3Store, object_key
from daemon.config import load_settings
from daemon.errors import DownloadError, InputError, StorageError
from tests.fixtures_daemon import wait_until
from tests.fixtures_s3 import new_bucket_name
from tests.servers.s3 import MotoS3Server, SeaweedS3Server, free_ports

MiB = 1024 * 1024
LOOPBACK = FetchPolicy(allow_networks=(ipaddress.ip_network("127.0.0.1/32"),), timeout_s=30.0)
SMALL_PARTS = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)  # 5 MiB: S3's minimum

BAD_JOB_IDS = ["", "../x", "/abs", "a/b", "a\\b", "abc\n", "a\x00b", "-lead", "_lead", "a.b", "a" * 129, "é"]
BAD_NAMES = [
    "",
    ".",
    "..",
    "../x",
    "/x",
    "a/../b",
    "a/./b",
    "a//b",
    "a/",
    "a..b",
    "a\\b",
    "a\x00b",
    "x\n",
    "a b",
    "ü.txt",
    "a" * 600,
]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- keys and names --------------------------------------------------------------------------------


def test_keys_are_deterministic_per_job() -> None:
    assert object_key("outputs", "job-1", "splat/scene.ply") == "outputs/job-1/splat/scene.ply"
    assert object_key("/outputs/", "job-1", "a.json") == "outputs/job-1/a.json"
    assert object_key("", "J_2", "a.json") == "J_2/a.json"


@pytest.mark.parametrize("job_id", BAD_JOB_IDS)
def test_bad_job_ids_are_refused(job_id: str, tmp_path: Path) -> None:
    src = write(tmp_path / "src.bin", b"x")
    with pytest.raises(StorageError) as caught:
        LocalStore(tmp_path / "out").put_file(job_id, "a.bin", src, "application/octet-stream")

    assert caught.value.code == "invalid_object_name" and not caught.value.retryable
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_by_every_store(name: str, tmp_path: Path) -> None:
    src = write(tmp_path / "src.bin", b"x")
    stores: list[Any] = [
        LocalStore(tmp_path / "out"),
        S3Store(None, "bucket", "outputs", TransferConfig()),  # refuses before touching the client
        PresignedPutStore({name: "http://127.0.0.1:1/x"}, LOOPBACK),
    ]
    for store in stores:
        with pytest.raises(StorageError) as caught:
            store.put_file("job-1", name, src, "application/octet-stream")
        assert caught.value.code == "invalid_object_name" and not caught.value.retryable
    assert not (tmp_path / "out").exists()


# --- local directory ---------------------------------------------------------------------------------


def test_local_store_copies_atomically_into_the_job_folder(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 7)
    src = write(tmp_path / "work" / "scene.ply", data)
    store = LocalStore(tmp_path / "out")

    got = store.put_file("job-1", "splat/scene.ply", src, "application/octet-stream")

    dest = tmp_path / "out" / "job-1" / "splat" / "scene.ply"
    assert dest.read_bytes() == data
    assert got.uri == dest.as_uri() and got.uri.startswith("file:///")
    assert (got.name, got.size, got.sha256) == ("splat/scene.ply", len(data), sha(data))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["scene.ply"]  # no temp file left


def test_local_store_put_twice_overwrites(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    store.put_file("job-1", "a.txt", write(tmp_path / "1", b"first"), "text/plain")
    got = store.put_file("job-1", "a.txt", write(tmp_path / "2", b"second"), "text/plain")

    assert Path(got.uri.removeprefix("file://")).read_bytes() == b"second"


def test_local_store_refuses_a_symlink_out_of_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "job-1").symlink_to(outside)

    with pytest.raises(StorageError) as caught:
        LocalStore(tmp_path / "out").put_file("job-1", "a.txt", write(tmp_path / "a", b"x"), "text/plain")

    assert caught.value.code == "invalid_object_name"
    assert list(outside.iterdir()) == []


def test_missing_output_file_is_a_permanent_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        LocalStore(tmp_path / "out").put_file("job-1", "a.txt", tmp_path / "nope", "text/plain")

    assert caught.value.code == "output_missing" and not caught.value.retryable


# --- S3 on moto ------------------------------------------------------------------------------------


def store_on(server: MotoS3Server | SeaweedS3Server, bucket: str, **client_args: Any) -> S3Store:
    client = s3_client(
        server.endpoint_url,
        server.region,
        access_key=server.access_key,
        secret_key=server.secret_key,
        **client_args,
    )
    return S3Store(client, bucket, "outputs", SMALL_PARTS)


def test_s3_client_uses_path_style_and_standard_retries() -> None:
    client = s3_client("http://127.0.0.1:1", "eu-west-1", access_key="a", secret_key="b", max_attempts=3)

    assert client.meta.config.s3["addressing_style"] == "path"
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert client.meta.region_name == "eu-west-1"


def test_s3_put_small_file(s3_bucket: tuple[MotoS3Server, str], tmp_path: Path) -> None:
    server, bucket = s3_bucket
    store = store_on(server, bucket)
    data = b'{"ok": true}'

    got = store.put_file("job-1", "result/summary.json", write(tmp_path / "s.json", data), "application/json")

    head = server.client().head_object(Bucket=bucket, Key="outputs/job-1/result/summary.json")
    assert head["ContentType"] == "application/json" and head["ContentLength"] == len(data)
    assert got.uri == f"s3://{bucket}/outputs/job-1/result/summary.json"
    assert (got.size, got.sha256) == (len(data), sha(data))
    body = server.client().get_object(Bucket=bucket, Key="outputs/job-1/result/summary.json")["Body"]
    assert body.read() == data


def test_s3_put_large_file_is_multipart(s3_bucket: tuple[MotoS3Server, str], tmp_path: Path) -> None:
    server, bucket = s3_bucket
    data = os.urandom(11 * MiB)

    got = store_on(server, bucket).put_file("job-2", "scene.ply", write(tmp_path / "p", data), "model/ply")

    head = server.client().head_object(Bucket=bucket, Key="outputs/job-2/scene.ply")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 1 MiB parts
    assert head["ContentType"] == "model/ply"
    assert (got.size, got.sha256) == (len(data), sha(data))
    body = server.client().get_object(Bucket=bucket, Key="outputs/job-2/scene.ply")["Body"].read()
    assert body == data


@pytest.mark.parametrize(("threshold_mb", "parts"), [("5", "-3"), ("64", "")], ids=["parts", "whole"])
def test_the_multipart_settings_reach_the_uploads(
    s3_bucket: tuple[MotoS3Server, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold_mb, parts
) -> None:
    # Given a daemon configured through its variables, as systemd's environment file would
    server, bucket = s3_bucket
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    settings = load_settings({
        "DAEMON_ENV_FILE": str(tmp_path / "no.env"),
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": server.endpoint_url,
        "AWS_REGION": server.region,
        "S3_MULTIPART_THRESHOLD_MB": threshold_mb,
        "S3_MULTIPART_CHUNK_MB": "6",
    })  # fmt: skip
    data = os.urandom(13 * MiB)
    # When the runtime's output store uploads a 13 MiB file
    Runtime(settings).output_store(None).put_file("job-mp", "big.bin", write(tmp_path / "b", data), "a/b")
    # Then it went in 6 MiB parts above the threshold (6 + 6 + 1: three parts), in one PUT below it
    head = server.client().head_object(Bucket=bucket, Key="jobs/job-mp/big.bin")
    etag = head["ETag"].strip('"')
    assert etag.endswith(parts) if parts else "-" not in etag
    assert head["ContentLength"] == len(data)


def test_s3_put_to_a_missing_bucket_is_permanent(moto_s3: MotoS3Server, tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        store_on(moto_s3, "no-such-bucket-here").put_file(
            "job-1", "a.txt", write(tmp_path / "a", b"x"), "text/plain"
        )

    assert caught.value.code == "storage_rejected" and not caught.value.retryable
    assert "NoSuchBucket" in caught.value.message


def test_s3_unreachable_endpoint_is_retryable(tmp_path: Path) -> None:
    client = s3_client(
        f"http://127.0.0.1:{free_ports(1)[0]}", "us-east-1", access_key="a", secret_key="b", max_attempts=1
    )
    store = S3Store(client, "bucket", "outputs", SMALL_PARTS)

    with pytest.raises(StorageError) as caught:
        store.put_file("job-1", "a.txt", write(tmp_path / "a", b"x"), "text/plain")

    assert caught.value.code == "storage_failed" and caught.value.retryable


def test_s3_describe_names_the_place_not_the_secret(s3_bucket: tuple[MotoS3Server, str]) -> None:
    server, bucket = s3_bucket
    text = store_on(server, bucket).describe()

    assert text == f"s3://{bucket}/outputs/ at {server.endpoint_url}"
    assert server.secret_key not in text


def test_s3_download_within_the_cap(s3_bucket: tuple[MotoS3Server, str], tmp_path: Path) -> None:
    server, bucket = s3_bucket
    data = os.urandom(6 * MiB)  # over the 5 MiB threshold: ranged GETs pinned by If-Match
    server.client().put_object(Bucket=bucket, Key="uploads/u1/video.mp4", Body=data)
    dest = tmp_path / "in" / "video.mp4"

    got = store_on(server, bucket).download("uploads/u1/video.mp4", dest, max_bytes=10 * MiB)

    assert got == dest and dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == ["video.mp4"]


def test_s3_download_over_the_cap_is_refused_before_fetching(
    s3_bucket: tuple[MotoS3Server, str], tmp_path: Path
) -> None:
    server, bucket = s3_bucket
    server.client().put_object(Bucket=bucket, Key="uploads/big.bin", Body=b"x" * 2048)
    dest = tmp_path / "big.bin"

    with pytest.raises(InputError) as caught:
        store_on(server, bucket).download("uploads/big.bin", dest, max_bytes=1024)

    assert caught.value.code == "input_too_large" and not caught.value.retryable
    assert caught.value.message == f"input s3://{bucket}/uploads/big.bin is 2048 bytes, over the 1024 limit"
    assert not dest.exists()


def test_s3_download_of_a_missing_key(s3_bucket: tuple[MotoS3Server, str], tmp_path: Path) -> None:
    server, bucket = s3_bucket
    with pytest.raises(InputError) as caught:
        store_on(server, bucket).download("uploads/none.jpg", tmp_path / "x", max_bytes=1024)

    assert caught.value.code == "input_not_found"


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../x", "a/../b", "a/./b", "a//b", "a\\..\\b", "a\x00b", "a\n"]
)
def test_s3_download_refuses_unsafe_keys(key: str, tmp_path: Path) -> None:
    store = S3Store(None, "bucket", "outputs", SMALL_PARTS)  # refused before any request

    with pytest.raises(InputError) as caught:
        store.download(key, tmp_path / "x", max_bytes=1024)

    assert caught.value.code == "invalid_input_key"


# --- S3 on SeaweedFS (signatures are checked) --------------------------------------------------------


@pytest.fixture
def seaweed_bucket(seaweed_s3: SeaweedS3Server) -> tuple[SeaweedS3Server, str]:
    return seaweed_s3, seaweed_s3.create_bucket(new_bucket_name())


def test_seaweed_round_trip_with_signed_requests(
    seaweed_bucket: tuple[SeaweedS3Server, str], tmp_path: Path
) -> None:
    server, bucket = seaweed_bucket
    data = os.urandom(11 * MiB)
    store = store_on(server, bucket)

    got = store.put_file("job-3", "scene.ply", write(tmp_path / "p", data), "model/ply")
    store.download(store.key_for("job-3", "scene.ply"), tmp_path / "back.ply", max_bytes=20 * MiB)

    assert (tmp_path / "back.ply").read_bytes() == data
    assert got.sha256 == sha(data)


def test_seaweed_refuses_a_wrong_secret_permanently(
    seaweed_bucket: tuple[SeaweedS3Server, str], tmp_path: Path
) -> None:
    server, bucket = seaweed_bucket
    client = s3_client(server.endpoint_url, server.region, access_key=server.access_key, secret_key="wrong")

    with pytest.raises(StorageError) as caught:
        S3Store(client, bucket, "outputs", SMALL_PARTS).put_file(
            "job-1", "a.txt", write(tmp_path / "a", b"x"), "text/plain"
        )

    assert caught.value.code == "storage_rejected" and not caught.value.retryable
    assert "SignatureDoesNotMatch" in caught.value.message


# --- presigned PUT URLs (SeaweedFS) -------------------------------------------------------------------


def presign(server: SeaweedS3Server, bucket: str, key: str, expires: int = 300, **params: str) -> str:
    return str(
        server.client().generate_presigned_url(
            "put_object", Params={"Bucket": bucket, "Key": key, **params}, ExpiresIn=expires
        )
    )


def test_presigned_put_delivers_the_file(seaweed_bucket: tuple[SeaweedS3Server, str], tmp_path: Path) -> None:
    server, bucket = seaweed_bucket
    data = os.urandom(2 * MiB + 3)
    url = presign(server, bucket, "web/job-4/scene.ply", ContentType="model/ply")  # Content-Type is signed
    store = PresignedPutStore({"scene.ply": url}, LOOPBACK)

    got = store.put_file("job-4", "scene.ply", write(tmp_path / "p", data), "model/ply")

    obj = server.client().get_object(Bucket=bucket, Key="web/job-4/scene.ply")
    assert obj["Body"].read() == data and obj["ContentType"] == "model/ply"
    assert got.uri == f"{server.endpoint_url}/{bucket}/web/job-4/scene.ply"  # no query string
    assert (got.size, got.sha256) == (len(data), sha(data))
    assert "Signature" not in store.describe()


def put_status(url: str) -> int:
    """The status a bare PUT of an empty body to `url` gets."""
    request = urllib.request.Request(url, data=b"", method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_expired_presigned_url_is_rejected(
    seaweed_bucket: tuple[SeaweedS3Server, str], tmp_path: Path
) -> None:
    server, bucket = seaweed_bucket
    url = presign(server, bucket, "web/late.bin", expires=1)
    # (the server's clock decides: wait until it refuses the URL, by asking it)
    wait_until(lambda: put_status(url) == 403, timeout=60, message="the URL never expired")

    with pytest.raises(StorageError) as caught:
        PresignedPutStore({"late.bin": url}, LOOPBACK).put_file(
            "j", "late.bin", write(tmp_path / "a", b"x"), "a/b"
        )

    assert caught.value.code == "presigned_url_rejected" and not caught.value.retryable
    assert caught.value.message == f"PUT {server.endpoint_url}/{bucket}/web/late.bin answered 403"


def test_tampered_presigned_url_is_rejected(
    seaweed_bucket: tuple[SeaweedS3Server, str], tmp_path: Path
) -> None:
    server, bucket = seaweed_bucket
    url = presign(server, bucket, "web/t.bin")
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    tampered = url.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    store = PresignedPutStore({"t.bin": tampered}, LOOPBACK)

    with pytest.raises(StorageError) as caught:
        store.put_file("j", "t.bin", write(tmp_path / "a", b"x"), "application/octet-stream")

    assert caught.value.code == "presigned_url_rejected" and not caught.value.retryable
    assert signature[1:] not in str(caught.value)
    assert "Contents" not in server.client().list_objects_v2(Bucket=bucket, Prefix="web/t.bin")


def test_presigned_put_without_a_url_for_the_name(tmp_path: Path) -> None:
    store = PresignedPutStore({"other.ply": "http://127.0.0.1:1/x"}, LOOPBACK)

    with pytest.raises(StorageError) as caught:
        store.put_file("j", "scene.ply", write(tmp_path / "a", b"x"), "model/ply")

    assert caught.value.code == "no_destination" and not caught.value.retryable


def test_presigned_put_url_must_pass_the_ssrf_guard(tmp_path: Path) -> None:
    store = PresignedPutStore(
        {"a.bin": "http://169.254.169.254/upload?X-Amz-Signature=s3cr3t"}, FetchPolicy()
    )

    with pytest.raises(StorageError) as caught:
        store.put_file("j", "a.bin", write(tmp_path / "a", b"x"), "application/octet-stream")

    assert caught.value.code == "url_address_forbidden" and not caught.value.retryable
    assert "s3cr3t" not in str(caught.value)


# A stand-in for a failing upload endpoint: records what arrived and answers with a fixed status.
class PutRecorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    status = 503
    answer_mib = 0
    received: list[tuple[dict[str, str], bytes]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_PUT(self) -> None:  # noqa: N802 - stdlib naming
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((dict(self.headers), body))
        self.send_response(self.status)
        self.send_header("Content-Length", str(self.answer_mib << 20))
        self.end_headers()
        try:  # an answer as long as the test asks, written until the client hangs up
            for _ in range(self.answer_mib * 16):
                self.wfile.write(bytes(65536))
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def put_server() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    PutRecorder.received, PutRecorder.status, PutRecorder.answer_mib = [], 503, 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), PutRecorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", PutRecorder.received
    httpd.shutdown()
    httpd.server_close()


def test_presigned_put_5xx_is_retryable_and_the_body_went_out_with_a_length(
    put_server: tuple[str, list[tuple[dict[str, str], bytes]]], tmp_path: Path
) -> None:
    base, received = put_server
    data = os.urandom(300_000)
    store = PresignedPutStore({"a.bin": f"{base}/bucket/a.bin?X-Amz-Signature=abc"}, LOOPBACK)

    with pytest.raises(StorageError) as caught:
        store.put_file("j", "a.bin", write(tmp_path / "a", data), "application/octet-stream")

    assert caught.value.code == "storage_failed" and caught.value.retryable
    assert caught.value.message == f"PUT {base}/bucket/a.bin answered 503, try again later"
    ((headers, body),) = received
    assert body == data
    assert headers["Content-Length"] == str(len(data)) and "Transfer-Encoding" not in headers


def test_a_presigned_put_targets_answer_is_read_only_up_to_a_cap(
    put_server: tuple[str, list[tuple[dict[str, str], bytes]]], tmp_path: Path
) -> None:
    # Given an upload target that accepts the file and then answers with 128 MiB
    base, received = put_server
    PutRecorder.status, PutRecorder.answer_mib = 200, 128
    store = PresignedPutStore({"a.bin": f"{base}/bucket/a.bin?X-Amz-Signature=abc"}, LOOPBACK)
    # When the file is uploaded
    tracemalloc.start()
    try:
        got = store.put_file("j", "a.bin", write(tmp_path / "a", b"payload"), "application/octet-stream")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then it is stored, and the answer was not read into memory
    assert got.size == 7 and received[0][1] == b"payload"
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_presigned_put_to_a_dead_endpoint_is_retryable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_ports(1)[0]}/bucket/a.bin?X-Amz-Signature=abc"

    with pytest.raises(StorageError) as caught:
        PresignedPutStore({"a.bin": url}, LOOPBACK).put_file("j", "a.bin", write(tmp_path / "a", b"x"), "a/b")

    assert caught.value.code == "storage_failed" and caught.value.retryable


def test_s3_download_from_an_unreachable_endpoint_is_retryable(tmp_path: Path) -> None:
    client = s3_client(
        f"http://127.0.0.1:{free_ports(1)[0]}", "us-east-1", access_key="a", secret_key="b", max_attempts=1
    )

    with pytest.raises(DownloadError) as caught:
        S3Store(client, "bucket", "", SMALL_PARTS).download(
            "uploads/a.jpg", tmp_path / "a.jpg", max_bytes=1024
        )

    assert caught.value.code == "download_failed" and caught.value.retryable
    assert "s3://bucket/uploads/a.jpg" in caught.value.message
