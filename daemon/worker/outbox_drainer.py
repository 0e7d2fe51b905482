"""The worker's outbox drainer: a thread of the parent process delivering queued callbacks and rows.

It runs beside the job (which lives in the work-horse), so a slow or failing receiver never holds the
GPU, and it keeps going after the job ended: a completion callback whose receiver is down is retried
with backoff and jitter, with the same webhook-id, for up to CALLBACK_MAX_AGE_S.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from ..adapters.callbacks import CallbackEvent, backoff_delay
from ..adapters.outbox import Delivery, OutboxItem, Sink
from ..adapters.rows import RowWriteError
from ..adapters.runtime import Runtime

log = logging.getLogger(__name__)


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

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def drain_once(self) -> int:
        sinks: dict[str, Sink] = {"row": self.write_row}
        if self.runtime.callback_sender is not None:
            sinks["callback"] = self.deliver_callback
        return self.runtime.outbox.drain_once(
            sinks, delay=lambda tries: backoff_delay(tries, base_s=2.0, cap_s=300.0), lane=delivery_lane
        )

    def _run(self) -> None:
        interval = self.runtime.settings.outbox_poll_interval_s
        while not self._stop.is_set():
            try:
                self.drain_once()
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
