"""Where outputs go and how S3 inputs come in (DESIGN §6), behind one small interface.

Every output lands at a deterministic place, `<prefix>/<job_id>/<name>`, so a job that runs twice
(delivery is at-least-once) overwrites its own earlier upload instead of leaving a second copy.
Job ids and names are checked here again even though the caller validated them: they become paths
and keys, and a `..` that slipped through would write outside the job's folder.

An upload either returns a `StoredObject` or raises `StorageError`; it never fails silently.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import botocore.exceptions
import httpx
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.subscribers import BaseSubscriber

from ..digest import Sha256Sum, file_chunks, file_sha256
from ..errors import DownloadError, InputError, JobError, StorageError
from ..spec.fields import is_job_id, redact_url
from .aws import AWS_ERRORS, s3_error
from .content_coding import read_capped
from .fetch import FetchPolicy, new_client, pinned_request, transport_errors
from .publish import PublishRaced, upload_fenced

NAME_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
"""One path segment of an output name; `/` separates sub-folders."""

PUT_ANSWER_MAX_BYTES = 64 * 1024
"""How much of a presigned-PUT target's answer is read: S3's error documents are a few hundred bytes."""

MAX_NAME_CHARS = 512
"""Output names are ours (e.g. `splat/point_cloud.ply`); anything longer is a bug, not a file."""


@dataclass(frozen=True)
class StoredObject:
    name: str
    # s3://bucket/key, file:///abs/path, or the presigned URL without its query string.
    uri: str
    size: int
    sha256: str
    content_type: str


Fence = Callable[[], None]
"""Raises AttemptSuperseded when the writing attempt is no longer the job's newest (the ledger's check)."""


class OutputStore(Protocol):
    def put_file(
        self, job_id: str, name: str, path: Path, content_type: str, fence: Fence | None = None
    ) -> StoredObject:
        """Store `path` as the job's output `name`; with `fence`, a superseded attempt's write never
        replaces a newer attempt's (each store as closely as it can: see its class)."""
        ...

    def describe(self) -> str:
        """Where outputs go, for logs; never contains secrets."""
        ...


# --- names and keys -------------------------------------------------------------------------------


def _is_safe_text(text: str) -> bool:
    return ".." not in text and "\\" not in text and text.isprintable() and text.isascii()


def check_job_id(job_id: str) -> str:
    """A job id as the spec defines it (`is_job_id`); anything else never becomes a path or key."""
    if not (is_job_id(job_id) and _is_safe_text(job_id)):
        raise StorageError(f"invalid job id {job_id!r}", code="invalid_object_name", retryable=False)
    return job_id


def check_name(name: str) -> str:
    """An output name: `[A-Za-z0-9._-]` segments joined by `/`, no empty, `.` or `..` segment."""
    ok = isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and _is_safe_text(name)
    ok = ok and all(NAME_SEGMENT_RE.fullmatch(seg) and seg not in (".", "..") for seg in name.split("/"))
    if not ok:
        raise StorageError(f"invalid output name {name!r}", code="invalid_object_name", retryable=False)
    return name


def object_key(prefix: str, job_id: str, name: str) -> str:
    """`<prefix>/<job_id>/<name>`, the one place an output key is spelled."""
    parts = [prefix.strip("/"), check_job_id(job_id), check_name(name)]
    return "/".join(part for part in parts if part)


def check_input_key(key: str) -> str:
    """An S3 key a job named as input: no leading `/`, no empty or `..` segment, no control characters."""
    ok = isinstance(key, str) and 0 < len(key) <= 1024 and key.isprintable() and "\\" not in key
    ok = ok and not key.startswith("/") and all(seg not in ("", ".", "..") for seg in key.split("/"))
    if not ok:
        raise InputError(f"invalid input key {key!r}", code="invalid_input_key")
    return key


# --- hashing and copying --------------------------------------------------------------------------


def _require_file(path: Path) -> None:
    """Fail early, permanently and clearly when the handler did not produce the file it names."""
    if not path.is_file():
        raise StorageError(f"output file {path} does not exist", code="output_missing", retryable=False)


# --- local directory ------------------------------------------------------------------------------


class LocalStore:
    """Outputs copied into `root/<job_id>/<name>`: the embedded default, and what tests inspect."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def describe(self) -> str:
        return f"local directory {self.root}"

    def put_file(
        self, job_id: str, name: str, path: Path, content_type: str, fence: Fence | None = None
    ) -> StoredObject:
        """Fenced right before the atomic rename: one machine, so the window is a rename's."""
        dest = self.root / check_job_id(job_id) / check_name(name)
        _require_file(path)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # A symlink planted inside root must not carry the write elsewhere.
            if not dest.parent.resolve().is_relative_to(self.root.resolve()):
                raise StorageError(f"{dest} escapes {self.root}", code="invalid_object_name", retryable=False)
            size, sha256 = self._copy_atomically(path, dest, fence or (lambda: None))
        except OSError as exc:
            raise StorageError(f"copying {name} to {dest} failed: {exc}") from exc
        return StoredObject(name, dest.as_uri(), size, sha256, content_type)

    @staticmethod
    def _copy_atomically(src: Path, dest: Path, fence: Fence) -> tuple[int, str]:
        """Copy through a temp file and rename, so readers see the old file or the whole new one."""
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        copied = Sha256Sum()
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in file_chunks(src):
                    copied.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())  # the rename must not land before the data does
            fence()
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return copied.size, copied.hexdigest()


# --- S3 -------------------------------------------------------------------------------------------


class _KnownObject(BaseSubscriber):
    """Tells the transfer manager the size and ETag we saw in HEAD: it downloads exactly that many
    bytes and sends If-Match on every ranged GET, so a swapped object fails instead of growing."""

    def __init__(self, size: int, etag: str) -> None:
        self._size, self._etag = size, etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)
        future.meta.provide_object_etag(self._etag)


class S3Store:
    """Outputs in `s3://bucket/<prefix>/<job_id>/<name>`. Unfenced, through boto3's transfer manager;
    fenced, as a conditional write that a superseded attempt cannot land (`daemon/adapters/publish.py`)."""

    def __init__(self, client: Any, bucket: str, prefix: str, transfer: TransferConfig) -> None:
        self.client, self.bucket, self.prefix, self.transfer = client, bucket, prefix.strip("/"), transfer

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"
        return f"{where} at {self.client.meta.endpoint_url}"

    def key_for(self, job_id: str, name: str) -> str:
        return object_key(self.prefix, job_id, name)

    def put_file(
        self, job_id: str, name: str, path: Path, content_type: str, fence: Fence | None = None
    ) -> StoredObject:
        """Upload `path` (in parts above the transfer threshold) while hashing it in this thread.

        The upload reads the file in its own threads, by part; we read it once more, sequentially,
        for the sha256, in parallel with the upload. Memory stays at a few parts.
        """
        key = self.key_for(job_id, name)
        _require_file(path)
        action = f"uploading {name} to s3://{self.bucket}/{key}"
        try:
            with ThreadPoolExecutor(max_workers=1) as uploader:
                done = uploader.submit(self._upload, key, path, content_type, fence)
                size, sha256 = file_sha256(path)
                done.result()
        except AWS_ERRORS as exc:
            raise s3_error(action, exc) from exc
        except PublishRaced as exc:
            raise StorageError(f"{action}: {exc}", code="storage_failed") from exc
        return StoredObject(name, f"s3://{self.bucket}/{key}", size, sha256, content_type)

    def _upload(self, key: str, path: Path, content_type: str, fence: Fence | None) -> None:
        if fence is not None:
            upload_fenced(
                self.client,
                self.bucket,
                key,
                path,
                content_type,
                fence=fence,
                whole_max_bytes=self.transfer.multipart_threshold,
                part_bytes=self.transfer.multipart_chunksize,
                threads=self.transfer.max_request_concurrency,
            )
            return
        with create_transfer_manager(self.client, self.transfer) as manager:
            manager.upload(str(path), self.bucket, key, extra_args={"ContentType": content_type}).result()

    def download(self, key: str, dest: Path, max_bytes: int) -> Path:
        """Fetch an input object to `dest` (atomically), refusing it up front if over `max_bytes`."""
        where = f"s3://{self.bucket}/{check_input_key(key)}"
        head = self._head_input(key, where)
        size = head["ContentLength"]
        if size > max_bytes:
            raise InputError(
                f"input {where} is {size} bytes, over the {max_bytes} limit", code="input_too_large"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            # The transfer manager writes to a temp name beside dest and renames on success.
            with create_transfer_manager(self.client, self.transfer) as manager:
                subscriber = _KnownObject(size, head["ETag"])
                manager.download(self.bucket, key, str(dest), subscribers=[subscriber]).result()
        except AWS_ERRORS as exc:
            raise s3_error(f"downloading {where}", exc, DownloadError) from exc
        return dest

    def _head_input(self, key: str, where: str) -> dict[str, Any]:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except botocore.exceptions.ClientError as exc:
            # HEAD answers have no body, so the status is all we learn.
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise InputError(f"input {where} not found", code="input_not_found") from exc
            if status == 403:
                raise InputError(f"input {where} is not readable by us", code="input_access_denied") from exc
            raise s3_error(f"looking up {where}", exc, DownloadError) from exc
        except AWS_ERRORS as exc:
            raise s3_error(f"looking up {where}", exc, DownloadError) from exc


# --- presigned PUT URLs ---------------------------------------------------------------------------


class PresignedPutStore:
    """Outputs PUT to URLs the job supplied, one per output name (the web app presigned them).

    The URLs are user input as much as any download URL: each must pass the SSRF guard, and the
    connection is pinned to the address that passed. Their query strings are credentials: only
    redacted forms appear in errors, logs and `StoredObject.uri`.
    """

    def __init__(self, urls: Mapping[str, str], fetch_policy: FetchPolicy) -> None:
        self.urls = dict(urls)
        self.policy = fetch_policy

    def describe(self) -> str:
        return f"presigned PUT URLs for {sorted(self.urls)}"

    def put_file(
        self, job_id: str, name: str, path: Path, content_type: str, fence: Fence | None = None
    ) -> StoredObject:
        """Fenced before the PUT only: the target is the customer's URL, with no condition to send."""
        check_job_id(job_id)
        check_name(name)
        if fence is not None:
            fence()
        url = self.urls.get(name)
        if url is None:
            raise StorageError(
                f"the job gave no upload URL for {name!r}", code="no_destination", retryable=False
            )
        _require_file(path)
        size = path.stat().st_size
        body = _HashingReader(path)
        where = f"PUT {redact_url(url)}"
        timeout = httpx.Timeout(self.policy.timeout_s, connect=self.policy.connect_timeout_s)
        try:
            with new_client() as client, transport_errors("PUT", url):
                request = pinned_request(
                    client,
                    "PUT",
                    url,
                    self.policy,
                    # Content-Length set by hand: a generator body would otherwise go out chunked,
                    # which S3 refuses for PUT Object.
                    headers={"Content-Length": str(size), "Content-Type": content_type},
                    content=body.chunks(),
                    timeout=timeout,
                )
                response = client.send(request, stream=True)
                try:  # only the status matters; an answer's body is read up to a small cap, no more
                    read_capped(response, PUT_ANSWER_MAX_BYTES)
                finally:
                    response.close()
        except InputError as exc:  # the URL failed the SSRF guard: it will fail the same way next time
            raise StorageError(exc.message, code=exc.code, retryable=False) from None
        except JobError as exc:  # network failure or DNS trouble: worth another attempt
            raise StorageError(exc.message, code="storage_failed", retryable=exc.retryable) from None
        _raise_for_put_status(response.status_code, where)
        if body.size != size:  # the server answered 2xx before reading everything we meant to send
            raise StorageError(f"{where}: sent {body.size} of {size} bytes", code="storage_failed")
        return StoredObject(name, redact_url(url), size, body.hexdigest(), content_type)


class _HashingReader:
    """Streams a file from disk as the request body, hashing what actually went out."""

    def __init__(self, path: Path) -> None:
        self.path, self._sum = path, Sha256Sum()

    @property
    def size(self) -> int:
        return self._sum.size

    def chunks(self) -> Iterator[bytes]:
        for chunk in file_chunks(self.path):
            self._sum.update(chunk)
            yield chunk

    def hexdigest(self) -> str:
        return self._sum.hexdigest()


def _raise_for_put_status(status: int, where: str) -> None:
    if 200 <= status < 300:
        return
    if status in (400, 403):  # expired, tampered or wrongly signed URL: a new attempt needs a new URL
        raise StorageError(f"{where} answered {status}", code="presigned_url_rejected", retryable=False)
    if status in (408, 429) or status >= 500:
        raise StorageError(f"{where} answered {status}, try again later", code="storage_failed")
    raise StorageError(f"{where} answered {status}", code="storage_rejected", retryable=False)
