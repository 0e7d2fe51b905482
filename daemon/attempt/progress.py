"""Live progress of one running job, written off the job's thread.

The job calls `update()` as often as it likes (every training step, say); a background thread writes
the latest state at most every `min_interval_s` (latest value wins, nothing queues up), refreshes the
heartbeat column every `heartbeat_s`, and retries failed writes with backoff. A Supabase outage
therefore never fails or slows the job. At the end, `close()` tries to land the final row for a few
seconds and otherwise hands it to the outbox, which keeps retrying after this process has exited.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..adapters.outbox import Outbox
from ..adapters.rows import RowStore, RowWriteError, utcnow_iso

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
"""Longest pause between two failed row writes while the job runs."""


class ProgressReporter:
    def __init__(
        self,
        rows: RowStore,
        base_row: Mapping[str, Any],
        *,
        outbox: Outbox | None,
        min_interval_s: float,
        heartbeat_s: float,
    ) -> None:
        self.rows = rows
        self.outbox = outbox
        self.min_interval_s = min_interval_s
        self.heartbeat_s = heartbeat_s
        self._state: dict[str, Any] = {"progress": 0, **base_row, "heartbeat_at": utcnow_iso()}
        self._version = 1  # bumped on every change; compared with what landed
        self._landed = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="progress-writer", daemon=True)

    # -- the job's side --------------------------------------------------------------------------

    def start(self) -> ProgressReporter:
        self._thread.start()
        return self

    def update(self, **fields: Any) -> None:
        """Merge fields into the row. Progress never goes backwards; nothing blocks."""
        with self._cond:
            if "progress" in fields:
                fields["progress"] = max(
                    int(self._state.get("progress", 0)), min(100, int(fields["progress"]))
                )
            changed = any(self._state.get(k) != v for k, v in fields.items())
            if not changed:
                return
            self._state.update(fields)
            self._version += 1
            self._cond.notify()

    @property
    def state(self) -> dict[str, Any]:
        with self._cond:
            return dict(self._state)

    def close(self, timeout_s: float = 5.0, **final: Any) -> bool:
        """Write the final fields; True if they landed, False if the outbox carries them on."""
        self.update(**final)
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()  # closed before it ever started (a job canceled while queued)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify()
            while self._landed < self._version and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            landed = self._landed >= self._version
            snapshot = dict(self._state)
        if not landed:
            self._hand_to_outbox(snapshot)
        return landed

    def discard(self) -> None:
        """Stop without writing anything more (a superseded attempt): pending changes are dropped."""
        with self._cond:
            self._landed = self._version
            self._closing = True
            self._cond.notify_all()

    def _hand_to_outbox(self, row: dict[str, Any]) -> None:
        if self.outbox is None:
            log.error("final row for %s not written and no outbox to keep it", row.get("id"))
            return
        try:
            self.outbox.put_row(row)
            log.warning("final row not written yet; the outbox will retry it (status=%s)", row.get("status"))
        except Exception:
            log.exception("final row for %s could not be written nor queued", row.get("id"))

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        last_write = 0.0
        last_beat = time.monotonic()
        while True:
            with self._cond:
                wait = self._next_wait(last_write, last_beat, backoff)
                if wait > 0:
                    self._cond.wait(timeout=wait)
                now = time.monotonic()
                # The heartbeat has its own clock: a job reporting progress all the time must still
                # show a fresh heartbeat, or the web app would take it for dead.
                if now - last_beat >= self.heartbeat_s:
                    self._state["heartbeat_at"] = utcnow_iso()
                    self._version += 1
                    last_beat = now
                if self._landed >= self._version:
                    if self._closing:
                        return
                    continue
                if not self._closing and now - last_write < max(self.min_interval_s, backoff):
                    continue
                version, snapshot = self._version, dict(self._state)
            last_write = time.monotonic()
            backoff = self._write(version, snapshot, backoff)

    def _write(self, version: int, snapshot: dict[str, Any], backoff: float) -> float:
        """One write attempt; returns the backoff to apply before the next one."""
        try:
            self.rows.write(snapshot)
        except RowWriteError as exc:
            if not exc.retryable:
                log.error("row write refused, dropping this version: %s", exc)
                self._mark_landed(version)
                return 0.0
            backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
            log.warning("row write failed (%s); retrying in %.0fs", exc, backoff)
            return backoff
        except Exception:
            log.exception("row write raised unexpectedly")
            return min(MAX_BACKOFF_S, max(1.0, backoff * 2))
        self._mark_landed(version)
        return 0.0

    def _next_wait(self, last_write: float, last_beat: float, backoff: float) -> float:
        now = time.monotonic()
        until_beat = self.heartbeat_s - (now - last_beat)
        if self._landed >= self._version:
            return 0.0 if self._closing else until_beat
        until_write = max(self.min_interval_s, backoff) - (now - last_write)
        return max(0.0, min(until_beat, until_write))

    def _mark_landed(self, version: int) -> None:
        with self._cond:
            self._landed = max(self._landed, version)
            self._cond.notify_all()
