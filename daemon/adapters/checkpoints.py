"""Checkpoints: what a job needs to continue elsewhere, kept under the job's prefix in S3 (or a folder).

A checkpoint is a set of named files (the SfM model as a tar, the training state, …) plus a small JSON
manifest that lists them with size and SHA-256, and carries the handler's stage records:

    <prefix>/<job id>/blobs/a<attempt>-<seq>-<name>      immutable, written first (multipart in S3)
    <prefix>/<job id>/manifests/a<attempt>-<seq>.json     immutable, written last, one small PUT

A manifest is only written once every file it lists is stored, and an object is visible in S3 only
once complete, so a reader never sees half a checkpoint. Names never repeat, so nothing is
overwritten: no conditional writes are needed. The reader takes the manifest with the highest
(attempt, seq) whose files all download with the listed SHA-256, falling back to older ones. Attempt
numbers come from the ledger (INCR): a newer attempt's manifests always outrank a stale attempt's,
and the writer checks it is still the current attempt (`fence`) before each manifest.

Each manifest lists the whole state, so only the newest valid one matters; files unchanged since
the last manifest are referenced again, not uploaded again. Older manifests and unreferenced files
are deleted after each write, keeping `KEEP_MANIFESTS` for fallback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..digest import file_sha256
from ..errors import StorageError
from .aws import AWS_ERRORS, s3_error
from .storage import check_job_id, check_name

log = logging.getLogger(__name__)

KEEP_MANIFESTS = 2
"""Manifests kept per job: the newest, and one to fall back on if the newest turns out damaged."""

_MANIFEST_RE = re.compile(r"a(\d{8})-(\d{8})\.json$")


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Restored:
    """A checkpoint brought back to local files: name → path, and the stage records it carried."""

    attempt: int
    seq: int
    files: dict[str, Path]
    records: dict[str, Any]


class Blobs(Protocol):
    """The few object operations checkpoints need, on S3 or a local folder."""

    def put_file(self, key: str, path: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_file(self, key: str, dest: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def keys(self, prefix: str) -> list[str]: ...
    def delete(self, keys: list[str]) -> None: ...
    def describe(self) -> str: ...


class CheckpointCorrupt(Exception):  # noqa: N818 - reads as what was found
    """A manifest or one of its files is missing, unreadable or fails its SHA-256."""


@dataclass
class Checkpoints:
    """The checkpoints of one job, written by one attempt. Not thread-safe: the job's thread uses it."""

    blobs: Blobs
    job_id: str
    attempt: int
    fence: Callable[[], None] = lambda: None
    interval_s: float = 300.0
    entries: dict[str, Entry] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    _seq: int = 0
    _last_commit: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.root = f"{check_job_id(self.job_id)}"

    # -- writing -------------------------------------------------------------------------------------

    def add(self, name: str, path: Path) -> Entry:
        """Store `path` as the checkpoint's file `name` (replacing an earlier file of that name in the
        next manifest). Nothing refers to it until `commit`."""
        self._seq += 1
        key = f"{self.root}/blobs/a{self.attempt:08d}-{self._seq:08d}-{check_name(name)}"
        size, sha256 = file_sha256(path)
        self.blobs.put_file(key, path)
        entry = Entry(key, size, sha256)
        self.entries[name] = entry
        return entry

    def commit(self, records: Mapping[str, Any] | None = None) -> str:
        """Write a manifest of every file added so far (this attempt or restored) and `records`."""
        self.fence()
        if records is not None:
            self.records = dict(records)
        self._seq += 1
        key = f"{self.root}/manifests/a{self.attempt:08d}-{self._seq:08d}.json"
        body = {
            "job_id": self.job_id,
            "attempt": self.attempt,
            "seq": self._seq,
            "written_at": time.time(),
            "files": {name: entry.__dict__ for name, entry in self.entries.items()},
            "records": self.records,
        }
        self.blobs.put_bytes(key, json.dumps(body, sort_keys=True).encode())
        self._last_commit = time.monotonic()
        log.info("checkpoint %s written (%d files)", key.rsplit("/", 1)[-1], len(self.entries))
        self._collect_garbage()
        return key

    def due(self) -> bool:
        """Whether the periodic interval has passed since the last checkpoint."""
        return time.monotonic() - self._last_commit >= self.interval_s

    # -- reading -------------------------------------------------------------------------------------

    def manifests(self) -> list[str]:
        """Manifest keys, newest (highest attempt, then seq) first."""
        keys = [k for k in self.blobs.keys(f"{self.root}/manifests/") if _MANIFEST_RE.search(k)]
        return sorted(keys, key=_order, reverse=True)

    def restore(self, into: Path) -> Restored | None:
        """Download the newest valid checkpoint into `into`; None if there is none. Files of a
        damaged checkpoint are discarded and the next older one is tried."""
        for key in self.manifests():
            try:
                restored = self._restore_one(key, into)
            except CheckpointCorrupt as exc:
                log.warning("checkpoint %s unusable (%s); trying an older one", key.rsplit("/", 1)[-1], exc)
                continue
            self.records = restored.records
            log.info(
                "resuming from checkpoint of attempt %d (%d files)", restored.attempt, len(restored.files)
            )
            return restored
        return None

    def _restore_one(self, key: str, into: Path) -> Restored:
        try:
            body = json.loads(self.blobs.get_bytes(key))
            files = {name: Entry(**e) for name, e in body["files"].items()}
        except (StorageError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointCorrupt(f"manifest: {exc}") from exc
        into.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, entry in files.items():
            dest = into / check_name(name)
            try:
                self.blobs.get_file(entry.key, dest)
            except StorageError as exc:
                raise CheckpointCorrupt(f"{name}: {exc}") from exc
            if file_sha256(dest) != (entry.size, entry.sha256):
                raise CheckpointCorrupt(f"{name}: size or SHA-256 differs from the manifest")
            paths[name] = dest
        self.entries = dict(files)
        return Restored(int(body["attempt"]), int(body["seq"]), paths, dict(body.get("records", {})))

    # -- cleanup -------------------------------------------------------------------------------------

    def _collect_garbage(self) -> None:
        """Delete manifests beyond the newest KEEP_MANIFESTS and files none of those reference, but
        only ones of this attempt or older (a newer attempt's files may not be committed yet)."""
        try:
            manifests = self.manifests()
            keep = manifests[:KEEP_MANIFESTS]
            referenced = set()
            for key in keep:
                referenced |= {e["key"] for e in json.loads(self.blobs.get_bytes(key))["files"].values()}
            blobs = self.blobs.keys(f"{self.root}/blobs/")
            doomed = [k for k in manifests[KEEP_MANIFESTS:] + blobs if k not in referenced]
            self.blobs.delete([k for k in doomed if _attempt_of(k) <= self.attempt])
        except (StorageError, ValueError, KeyError) as exc:
            log.warning("old checkpoints not cleaned up: %s", exc)

    def delete_all(self) -> None:
        """Remove every checkpoint of the job (it ended: completed, failed for good, canceled)."""
        keys = self.blobs.keys(f"{self.root}/")
        self.blobs.delete(keys)
        if keys:
            log.info("deleted %d checkpoint objects", len(keys))


def _order(key: str) -> tuple[int, int]:
    match = _MANIFEST_RE.search(key)
    assert match is not None
    return int(match.group(1)), int(match.group(2))


def _attempt_of(key: str) -> int:
    match = re.search(r"/a(\d{8})-", key)
    return int(match.group(1)) if match else 0


# -- backends ----------------------------------------------------------------------------------------


class LocalBlobs:
    """Checkpoints in a folder (embedded default, laptops): writes via temp file + fsync + rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def describe(self) -> str:
        return f"local directory {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_file(self, key: str, path: Path) -> None:
        with path.open("rb") as src:
            self._write(key, iter(lambda: src.read(1 << 20), b""))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, iter([data]))

    def _write(self, key: str, chunks: Iterator[bytes]) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"writing checkpoint {key}: {exc}") from exc

    def get_file(self, key: str, dest: Path) -> None:
        try:
            shutil.copyfile(self._path(key), dest)
        except OSError as exc:
            raise StorageError(f"reading checkpoint {key}: {exc}") from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"reading checkpoint {key}: {exc}") from exc

    def keys(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        folder = base if prefix.endswith("/") else base.parent
        if not folder.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".part-")
        )

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)


class S3Blobs:
    """Checkpoints in `s3://bucket/<prefix>/…`: files through the transfer manager (multipart)."""

    def __init__(self, client: Any, bucket: str, prefix: str, transfer: Any) -> None:
        self.client, self.bucket, self.prefix, self.transfer = client, bucket, prefix.strip("/"), transfer

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer)
        except AWS_ERRORS as exc:
            raise s3_error(f"writing checkpoint {key}", exc) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except AWS_ERRORS as exc:
            raise s3_error(f"writing checkpoint {key}", exc) from exc

    def get_file(self, key: str, dest: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest), Config=self.transfer)
        except AWS_ERRORS as exc:
            raise s3_error(f"reading checkpoint {key}", exc) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except AWS_ERRORS as exc:
            raise s3_error(f"reading checkpoint {key}", exc) from exc

    def keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        strip = len(self._key(""))
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            ):
                keys += [obj["Key"][strip:] for obj in page.get("Contents", [])]
        except AWS_ERRORS as exc:
            raise s3_error(f"listing checkpoints {prefix}", exc) from exc
        return sorted(keys)

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except AWS_ERRORS as exc:
                raise s3_error("deleting checkpoints", exc) from exc
