"""Where progress rows are written: Supabase (production) or JSON files (embedded default, demo, laptops).

A row write is one upsert of the fields that changed, keyed by job id. The ordering rules (fencing by
attempt, monotonic progress, terminal status final per attempt) are enforced by the table's trigger in
Supabase (`supabase/migrations/`), and by `merge_row` for local files, so writers may retry and replay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "failed", "canceled"})


class RowWriteError(Exception):
    """A row write did not land. `retryable` says whether sending it again can help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class RowStore(Protocol):
    def write(self, row: Mapping[str, Any]) -> None: ...

    def read(self, job_id: str) -> dict[str, Any] | None: ...


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SupabaseRows:
    """Rows in a Supabase table through supabase-py (PostgREST). supabase-py retries only reads, so a
    failed write is reported as `RowWriteError` and the caller's retry policy decides."""

    def __init__(self, url: str, key: str, table: str, *, timeout_s: float = 10.0) -> None:
        from supabase.lib.client_options import SyncClientOptions

        from supabase import create_client

        options = SyncClientOptions(postgrest_client_timeout=timeout_s, auto_refresh_token=False)
        self.client = create_client(url, key, options=options)
        self.table = table
        self._lock = threading.Lock()  # one httpx client, shared by the writer thread and finalizers

    def write(self, row: Mapping[str, Any]) -> None:
        from postgrest import APIError
        from postgrest.types import ReturnMethod

        try:
            with self._lock:
                self.client.table(self.table).upsert(
                    dict(row), on_conflict="id", returning=ReturnMethod.minimal
                ).execute()
        except APIError as exc:
            # 4xx from PostgREST is a row the database refuses (constraint, unknown column): sending it
            # again cannot help. Anything else (5xx, proxy error page) may pass.
            status = _api_error_status(exc)
            raise RowWriteError(
                f"supabase refused row: {exc.message or exc}", retryable=status >= 500
            ) from exc
        except Exception as exc:  # httpx transport errors, timeouts, JSON decode of an error page
            raise RowWriteError(f"supabase unreachable: {type(exc).__name__}: {exc}", retryable=True) from exc

    def read(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            result = self.client.table(self.table).select("*").eq("id", job_id).execute()
        return dict(result.data[0]) if result.data else None  # type: ignore[arg-type]


def _api_error_status(exc: Exception) -> int:
    code = str(getattr(exc, "code", "") or "")
    # postgrest-py puts the HTTP status nowhere stable; PostgREST's own codes tell 4xx from 5xx.
    # PGRST000-003 mean the database is unreachable or timing out (503/504): worth retrying.
    if code.startswith("PGRST0"):
        return 503
    if code.startswith("PGRST") or (len(code) == 5 and code[:2] in {"22", "23", "42"}):
        return 400
    return 503


def merge_row(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The migration trigger's rules in Python, for local rows. Returns None when `new` is dropped."""
    if old is None:
        merged = {"progress": 0, "outputs": {}, "created_at": utcnow_iso(), **new}
    else:
        old_attempt, new_attempt = int(old.get("attempt", 0)), int(new.get("attempt", old.get("attempt", 0)))
        old_terminal = old.get("status") in TERMINAL
        if new_attempt < old_attempt or (new_attempt == old_attempt and old_terminal):
            return None
        merged = {**old, **new}
        if new_attempt == old_attempt:
            merged["progress"] = max(int(old.get("progress", 0)), int(new.get("progress", 0)))
        if old.get("heartbeat_at") and (merged.get("heartbeat_at") or "") < old["heartbeat_at"]:
            merged["heartbeat_at"] = old["heartbeat_at"]
        merged["started_at"] = old.get("started_at") or new.get("started_at")
        if old.get("owner_id"):  # a row belongs to its first owner for good
            merged["owner_id"] = old["owner_id"]
    merged["updated_at"] = utcnow_iso()
    merged["finished_at"] = utcnow_iso() if merged.get("status") in TERMINAL else None
    return merged


class LocalRows:
    """One JSON file per job under a state directory. Each write is logged at DEBUG only: during training
    the reporter writes about once a second, and INFO is kept for one line per event (stage started and
    done, training every few hundred steps, requeue, failure), which is what `journalctl -u` should show.
    Writes are atomic (temp file + rename) and serialised per process."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "jobs"
        self._lock = threading.Lock()

    def _path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.json"

    def read(self, job_id: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self._path(job_id).read_text()))
        except FileNotFoundError:
            return None

    def write(self, row: Mapping[str, Any]) -> None:
        with self._lock:
            merged = merge_row(self.read(row["id"]), row)
            if merged is None:
                return
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".row-")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(merged, out, indent=2, sort_keys=True)
                os.replace(tmp, self._path(row["id"]))
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        log.debug(
            "row %s status=%s stage=%s progress=%s",
            merged["id"],
            merged.get("status"),
            merged.get("stage"),
            merged.get("progress"),
        )
