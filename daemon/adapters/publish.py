"""Writing an output to its S3 key so that a superseded attempt can never overwrite a newer one's.

Split brain happens: an instance presumed dead (its heartbeat expired behind a network partition) comes
back while a newer attempt of its job runs elsewhere, and both write the same deterministic keys. A fence
checked before a long upload leaves a window as long as the upload. This closes it with S3's conditional
writes: the bytes go up first, invisibly (a multipart upload not yet completed, or held for one PUT);
then the key's current ETag is read (HEAD), then the fence is checked (the ledger says this attempt is
still the job's newest), then the object is made visible with `If-Match: <that ETag>` (`If-None-Match: *`
when there was none) on the PUT or the CompleteMultipartUpload.

A newer attempt bumps the ledger before it writes anything. So if its object landed before our HEAD,
our fence fails; if after, our write's condition fails (412). Either way a stale write never lands on a
newer attempt's object, and a current attempt that loses the race to a stale write reads again and wins.
An upload that does not complete is aborted; one whose process died is removed by the bucket's
AbortIncompleteMultipartUpload lifecycle rule (README, "Provisioning a fleet").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import botocore.exceptions

log = logging.getLogger(__name__)

PUBLISH_TRIES = 5
"""How often a current attempt re-reads and retries when a stale attempt's write beat it to the key."""

MAX_PARTS = 10_000
"""S3's limit on the parts of one upload: larger files get larger parts."""


class PublishRaced(Exception):  # noqa: N818 - an outcome, not a failure
    """The key changed between our read and our write, PUBLISH_TRIES times."""


def upload_fenced(
    client: Any,
    bucket: str,
    key: str,
    path: Path,
    content_type: str,
    *,
    fence: Callable[[], None],
    whole_max_bytes: int,
    part_bytes: int,
    threads: int,
) -> None:
    """Upload `path` to `key` as the fenced, conditional write described above: in one PUT up to
    `whole_max_bytes`, else in parts. `fence` raises (AttemptSuperseded) when this attempt is stale;
    AWS errors propagate to the caller."""
    size = path.stat().st_size
    if size <= whole_max_bytes:
        _put_whole(client, bucket, key, path, content_type, fence)
        return
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)["UploadId"]
    try:
        part = max(part_bytes, -(-size // MAX_PARTS))
        parts = _upload_parts(client, bucket, key, upload_id, path, size, part, threads)

        def complete(condition: dict[str, str]) -> None:
            client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition
            )

        _write_when_current(client, bucket, key, fence, complete)
    except BaseException:
        _abort(client, bucket, key, upload_id)
        raise


def _put_whole(
    client: Any, bucket: str, key: str, path: Path, content_type: str, fence: Callable[[], None]
) -> None:
    def put(condition: dict[str, str]) -> None:
        with path.open("rb") as body:
            client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **condition)

    _write_when_current(client, bucket, key, fence, put)


def _write_when_current(
    client: Any, bucket: str, key: str, fence: Callable[[], None], write: Callable[[dict[str, str]], None]
) -> None:
    for _ in range(PUBLISH_TRIES):
        etag = _etag_of(client, bucket, key)
        fence()
        try:
            write({"IfMatch": etag} if etag else {"IfNoneMatch": "*"})
            return
        except botocore.exceptions.ClientError as exc:
            if not _precondition_failed(exc):
                raise
            log.info("s3://%s/%s changed while we wrote it; reading it again", bucket, key)
    raise PublishRaced(f"s3://{bucket}/{key} kept changing under {PUBLISH_TRIES} writes")


def _upload_parts(
    client: Any, bucket: str, key: str, upload_id: str, path: Path, size: int, part: int, threads: int
) -> list[dict[str, Any]]:
    """The parts, `threads` at a time; each thread reads only its own part (memory: threads × part)."""

    def one(number: int) -> dict[str, Any]:
        with path.open("rb") as source:
            source.seek((number - 1) * part)
            data = source.read(part)
        answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        return {"ETag": answer["ETag"], "PartNumber": number}

    count = -(-size // part)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, range(1, count + 1)))


def _etag_of(client: Any, bucket: str, key: str) -> str | None:
    try:
        return str(client.head_object(Bucket=bucket, Key=key)["ETag"])
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise


def _precondition_failed(exc: botocore.exceptions.ClientError) -> bool:
    # 412 PreconditionFailed; 409 ConditionalRequestConflict when two conditional writes overlap
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = exc.response.get("Error", {}).get("Code")
    return status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict")


def _abort(client: Any, bucket: str, key: str, upload_id: str) -> None:
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        log.warning(
            "incomplete upload of s3://%s/%s not aborted (the lifecycle rule will): %s", bucket, key, exc
        )
