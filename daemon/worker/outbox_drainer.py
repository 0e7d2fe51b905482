"""The worker's outbox drainer: a thread of the parent process delivering queued callbacks and rows.

It runs beside the job (which lives in the work-horse), so a slow or failing receiver never holds the
GPU, and it keeps going after the job ended: a completion callback whose receiver is down is retried
with backoff and jitter, with the same webhook-id, for up to CALLBACK_MAX_AGE_S.

Deliveries go out in lanes (one per receiving host, one for rows), each lane on a thread of its own and
in order within it. A lane still busy from an earlier round (a receiver drip-feeding its answer until
CALLBACK_TIMEOUT_S cuts it) is skipped, its new items given back for the next round: no lane ever waits
for another, so one customer's slow endpoint never delays another's callbacks or the row writes.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit

from ..adapters.callbacks import CallbackEvent, backoff_delay
from ..adapters.outbox import Delivery, OutboxItem, Sink
from ..adapters.rows import RowWriteError
from ..adapters.runtime import Runtime

log = logging.getLogger(__name__)

FLUSH_S = 5.0
"""How long a stopping worker spends delivering what is due before it exits (a spot notice leaves 2 min)."""

MAX_LANES = 8
"""Lanes delivered at once; more busy hosts than this wait their turn (their items stay due)."""


def delivery_lane(item: OutboxItem) -> str:
    """Callbacks to one host share a lane; rows have their own. Lanes are delivered side by side."""
    if item.kind == "callback":
        return "callback:" + (urlsplit(str(item.data.get("url", ""))).netloc or "?")
    return item.kind


class OutboxDrainer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-drainer", daemon=True)
        # The lanes being delivered, each on a daemon thread: a lane stuck until its deadline never
        # holds up the others, nor the worker's exit.
        self._busy: dict[str, threading.Thread] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0, flush_s: float = FLUSH_S) -> None:
        """Stop polling, then give what is due one last round before the worker exits.

        The job's last callback (`job.requeued` after a spot notice) is queued by the horse just before
        the worker leaves; without this round it would wait out its lease and reach the customer after
        the next attempt's callbacks. Whatever is still in flight at `flush_s` is left to its lease."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        deadline = time.monotonic() + flush_s
        self._join_lanes(deadline)
        try:
            self.dispatch_once()
        except Exception as exc:  # Redis away: the items stay in the outbox for another worker
            log.warning("outbox not flushed: %s", exc)
        self._join_lanes(deadline)

    def _join_lanes(self, deadline: float) -> None:
        for lane in list(self._busy.values()):
            lane.join(max(0.0, deadline - time.monotonic()))

    def sinks(self) -> dict[str, Sink]:
        sinks: dict[str, Sink] = {"row": self.write_row}
        if self.runtime.callback_sender is not None:
            sinks["callback"] = self.deliver_callback
        return sinks

    @staticmethod
    def retry_delay(tries: int) -> float:
        return backoff_delay(tries, base_s=2.0, cap_s=300.0)

    def drain_once(self) -> int:
        """Deliver every due item once and wait for all of it (lanes side by side): for tests and
        tools; the running drainer dispatches instead (`dispatch_once`)."""
        return self.runtime.outbox.drain_once(self.sinks(), delay=self.retry_delay, lane=delivery_lane)

    def dispatch_once(self) -> int:
        """Claim what is due and hand each lane to a thread, without waiting for any; returns how many
        items were handed out."""
        outbox, sinks = self.runtime.outbox, self.sinks()
        self._busy = {name: thread for name, thread in self._busy.items() if thread.is_alive()}
        lanes: dict[str, list[OutboxItem]] = {}
        for item in outbox.claim_due():
            if item.kind in sinks:  # (another kind stays leased, for a worker that has its sink)
                lanes.setdefault(delivery_lane(item), []).append(item)
        handed = 0
        for name, items in lanes.items():
            if name in self._busy or len(self._busy) >= MAX_LANES:
                outbox.release(items, after_s=self.runtime.settings.outbox_poll_interval_s)
                continue
            lane = threading.Thread(
                target=self._deliver_lane, args=(sinks, items), name=f"outbox {name}", daemon=True
            )
            self._busy[name] = lane
            lane.start()
            handed += len(items)
        return handed

    def _deliver_lane(self, sinks: dict[str, Sink], items: list[OutboxItem]) -> int:
        try:
            return self.runtime.outbox.deliver_lane(sinks, items, self.retry_delay)
        except Exception as exc:  # Redis away mid-lane: the items' leases run out and they come back
            log.warning("outbox lane not drained: %s", exc)
            return 0

    def _run(self) -> None:
        interval = self.runtime.settings.outbox_poll_interval_s
        while not self._stop.is_set():
            try:
                self.dispatch_once()
            except Exception as exc:  # Redis away: try again next round
                log.warning("outbox not drained: %s", exc)
            self._stop.wait(interval)

    def deliver_callback(self, item: OutboxItem) -> Delivery:
        sender = self.runtime.callback_sender
        assert sender is not None  # only registered as a sink when there is one
        data = item.data
        event = CallbackEvent(
            webhook_id=item.item_id.removeprefix("callback:"),
            url=data["url"],
            body=data["body"].encode(),
            type=data["type"],
            job_id=data["job_id"],
        )
        outcome = sender.deliver(event)
        if outcome.ok:
            log.info("callback %s for %s delivered (%s)", event.type, event.job_id, outcome.status)
        return Delivery(outcome.ok, outcome.retryable, outcome.error, retry_after_s=outcome.retry_after_s)

    def write_row(self, item: OutboxItem) -> Delivery:
        try:
            self.runtime.rows.write(item.data)
        except RowWriteError as exc:
            return Delivery(ok=False, retryable=exc.retryable, error=str(exc))
        log.info("queued row for %s written (status=%s)", item.data.get("id"), item.data.get("status"))
        return Delivery(ok=True)
