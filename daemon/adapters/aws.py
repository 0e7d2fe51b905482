"""AWS through boto3, in one place: the client factory, what a call can raise, and how an S3 failure
becomes a job error. S3 (outputs, inputs, checkpoints) and the fleet (Auto Scaling, CloudWatch) both
build their clients here, so timeouts, retries and credentials work the same way everywhere.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from ..errors import JobError, StorageError

AWS_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError)
"""What a boto3 call or an S3 transfer can raise: service answers, client-side failures (no region, no
credentials) and local I/O."""

PERMANENT_S3_ERRORS = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "NoSuchBucket",
        "SignatureDoesNotMatch",
    }
)
"""S3 error codes that another attempt with the same configuration cannot fix."""


def aws_client(
    service: str,
    region: str | None,
    *,
    endpoint_url: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
    max_attempts: int = 2,
    connect_timeout_s: float = 3.0,
    read_timeout_s: float = 5.0,
    max_pool_connections: int = 10,
) -> Any:
    """A boto3 client for `service`. The defaults suit the fleet's calls: small, and retried on the next
    tick anyway, so short timeouts and two attempts. Without keys, boto3's usual chain (env, instance
    profile) supplies them; with `region` None, the chain's region too.

    Retries use botocore's "standard" mode: exponential backoff with jitter on throttling, 5xx and
    connection errors, bounded by max_attempts (counting the first try).

    For S3, an endpoint_url means an S3-compatible server (SeaweedFS, MinIO, moto): those want path-style
    addressing (`http://host/bucket/key`) since `bucket.host` does not resolve.
    """
    s3_only: dict[str, Any] = {}
    if service == "s3":
        s3_only = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path" if endpoint_url else "auto"},
        }
    config = Config(
        region_name=region,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        max_pool_connections=max_pool_connections,
        **s3_only,
    )
    session = boto3.session.Session()  # a private session: the default one is not thread-safe to build
    return session.client(
        service,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
        config=config,
    )


def s3_client(
    endpoint_url: str | None,
    region: str | None,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
    max_attempts: int = 5,
    connect_timeout_s: float = 10.0,
    read_timeout_s: float = 60.0,
    max_pool_connections: int = 16,
) -> Any:
    """An S3 client for outputs, inputs and checkpoints: more attempts and longer timeouts than the
    fleet's (a part of a multi-GB transfer is worth waiting for), and a pool as wide as the transfer
    manager's threads."""
    return aws_client(
        "s3",
        region,
        endpoint_url=endpoint_url,
        access_key=access_key,
        secret_key=secret_key,
        session_token=session_token,
        max_attempts=max_attempts,
        connect_timeout_s=connect_timeout_s,
        read_timeout_s=read_timeout_s,
        max_pool_connections=max_pool_connections,
    )


def s3_error(action: str, exc: Exception, error: type[JobError] = StorageError) -> JobError:
    """Map a boto3 failure to `error` (StorageError for outputs, DownloadError for inputs),
    retryable unless the server said it never will work."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        permanent = code in PERMANENT_S3_ERRORS
        return error(
            f"{action}: {code}", code="storage_rejected" if permanent else None, retryable=not permanent
        )
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return error(f"{action}: no S3 credentials configured", code="storage_rejected", retryable=False)
    return error(f"{action}: {type(exc).__name__}: {exc}", retryable=True)
