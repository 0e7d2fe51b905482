"""The daemon's connections to the world, built from the settings once per process.

The worker parent and each forked work-horse build their own (`Runtime.for_this_process`): sockets and
HTTP clients must not be shared across fork().
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as RedisRetry

from ..config import Settings
from ..digest import file_sha256
from ..errors import InputError, SpecError
from ..spec.model import InputRef
from .aws import s3_client
from .callbacks import CallbackSender, CallbackSigner
from .checkpoints import Blobs, Checkpoints, LocalBlobs, S3Blobs
from .fetch import SNIFF_BYTES, FetchPolicy, check_content, check_url, fetch_to_file, pinned_request
from .ledger import Ledger
from .outbox import Outbox, outbox_key
from .rows import LocalRows, RowStore, SupabaseRows
from .storage import LocalStore, OutputStore, PresignedPutStore, S3Store

REDIS_RETRIES = 10
"""Each Redis command is retried this often (backoff capped at 1 s): a Redis restart of a few seconds
is invisible to the worker and to running jobs, instead of ending the one or failing the other."""


def redis_client(url: str) -> Redis:
    # health_check_interval: a connection idle across a Redis restart is re-made, not reused broken.
    return Redis.from_url(
        url,
        retry=RedisRetry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=15,
        socket_timeout=30,
    )


_PER_PROCESS: dict[tuple[int, int], Runtime] = {}


@dataclass
class Runtime:
    settings: Settings

    @classmethod
    def for_this_process(cls, settings: Settings) -> Runtime:
        key = (os.getpid(), id(settings))
        if key not in _PER_PROCESS:
            _PER_PROCESS[key] = cls(settings)
        return _PER_PROCESS[key]

    @cached_property
    def redis(self) -> Redis:
        return redis_client(self.settings.redis_url)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.redis)

    @cached_property
    def outbox(self) -> Outbox:
        s = self.settings
        key = outbox_key(s.callback_secret, s.supabase_key)
        return Outbox(self.redis, max_age_s=s.callback_max_age_s, key=key)

    @cached_property
    def rows(self) -> RowStore:
        s = self.settings
        if s.supabase_url and s.supabase_key:
            return SupabaseRows(s.supabase_url, s.supabase_key, s.supabase_table)
        return LocalRows(s.state_dir)

    @cached_property
    def fetch_policy(self) -> FetchPolicy:
        s = self.settings
        return FetchPolicy(
            max_bytes=s.download_max_bytes,
            timeout_s=s.download_timeout_s,
            connect_timeout_s=min(10.0, s.download_timeout_s),
            max_redirects=s.download_max_redirects,
            allow_networks=s.url_allow_networks,
        )

    def check_url(self, url: str) -> None:
        check_url(url, self.fetch_policy)

    @cached_property
    def s3(self) -> Any:
        s = self.settings
        return s3_client(s.s3_endpoint_url, s.aws_region)

    def s3_store(self, prefix: str | None = None) -> S3Store:
        from boto3.s3.transfer import TransferConfig

        s = self.settings
        if not s.s3_bucket:
            raise SpecError("this daemon has no S3_BUCKET configured for S3 inputs or outputs", code="no_s3")
        mb = 1024 * 1024
        transfer = TransferConfig(
            multipart_threshold=s.s3_multipart_threshold_mb * mb,
            multipart_chunksize=s.s3_multipart_chunk_mb * mb,
        )
        return S3Store(self.s3, s.s3_bucket, prefix if prefix is not None else s.s3_prefix, transfer)

    def output_store(self, output: Any) -> OutputStore:
        """Where this job's outputs go: its presigned URLs, its S3 prefix, or the configured default."""
        if output is not None and getattr(output, "presigned_put", None):
            return PresignedPutStore(dict(output.presigned_put), self.fetch_policy)
        if output is not None and getattr(output, "s3_prefix", None):
            return self.s3_store(output.s3_prefix)
        if self.settings.storage_backend == "s3":
            return self.s3_store()
        return LocalStore(self.settings.output_dir)

    @cached_property
    def checkpoint_blobs(self) -> Blobs:
        """Where checkpoints live: S3_BUCKET under CHECKPOINT_PREFIX with the s3 backend, else a folder
        under DAEMON_STATE_DIR (only useful to jobs resumed on the same machine)."""
        s = self.settings
        if s.storage_backend == "s3" and s.s3_bucket:
            store = self.s3_store()
            return S3Blobs(self.s3, s.s3_bucket, s.checkpoint_prefix, store.transfer)
        return LocalBlobs(s.state_dir / s.checkpoint_prefix)

    def checkpoints(self, job_id: str, attempt: int) -> Checkpoints:
        return Checkpoints(
            self.checkpoint_blobs,
            job_id,
            attempt,
            fence=lambda: self.ledger.check_current(job_id, attempt),
            interval_s=self.settings.checkpoint_interval_s,
        )

    @cached_property
    def callback_sender(self) -> CallbackSender | None:
        s = self.settings
        if not s.callback_secret:
            return None
        policy = self.fetch_policy
        return CallbackSender(
            CallbackSigner(s.callback_secret),
            timeout_s=s.callback_timeout_s,
            pin=lambda client, method, url, **kw: pinned_request(client, method, url, policy, **kw),
        )

    def input_source(self) -> InputSource:
        return InputSource(self)


class InputSource:
    """Fetches one spec input (a URL or an S3 key) to a path."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def fetch(
        self,
        item: InputRef,
        dest: Path,
        accept: Callable[[str, bytes], bool] | None,
        max_bytes: int | None = None,
    ) -> Path:
        """`max_bytes`, a job's own size cap, can only lower the daemon's DOWNLOAD_MAX_BYTES. An input
        whose spec gives its SHA-256 is refused when the bytes that arrived differ."""
        policy = self.runtime.fetch_policy
        if max_bytes is not None:
            policy = replace(policy, max_bytes=min(policy.max_bytes, max_bytes))
        if item.url:
            fetched = fetch_to_file(item.url, dest, policy, accept=accept)
            path, sha256 = fetched.path, fetched.sha256
        else:
            path = self.runtime.s3_store(prefix="").download(str(item.s3_key), dest, policy.max_bytes)
            self._vet(path, accept, item.label)
            sha256 = file_sha256(path)[1] if item.sha256 else ""
        if item.sha256 and sha256 != item.sha256.lower():
            path.unlink(missing_ok=True)
            raise InputError(
                f"{item.label}: its SHA-256 is {sha256}, the spec expects {item.sha256.lower()} "
                "(a different or damaged file)",
                code="checksum_mismatch",
            )
        return path

    @staticmethod
    def _vet(path: Path, accept: Callable[[str, bytes], bool] | None, label: str) -> None:
        """An S3 input meets the same first-bytes check as a download (which runs it as bytes arrive):
        a web page or a photo named .mp4 never reaches a decoder."""
        if accept is None:
            return
        with path.open("rb") as src:
            head = src.read(SNIFF_BYTES)
        try:
            check_content(accept, "", head, label)
        except InputError:
            path.unlink(missing_ok=True)
            raise
