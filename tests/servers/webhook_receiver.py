"""A real HTTP webhook receiver for tests: verifies every request the way our customers' apps will.

It listens on a free loopback port, accepts any path, and checks each request with the `standardwebhooks`
package (the same code a Next.js receiver runs), so a passing test proves the signature, not our reading
of the spec. Outages are simulated by count, never by time, so a test holds on a loaded machine:
`fail_next` (the next N deliveries, optionally only of one event type or webhook id), `outage` until
`end_outage`, and `stall_next`. Tests wait on what arrived: `wait_for`, `wait_for_attempts`.

    rx = WebhookReceiver().start()
    rx.fail_next(2, status=503, type="job.completed")
    ... deliver to rx.url + "/hooks/job-1" signed with rx.secret ...
    event = rx.wait_for(lambda e: e.type == "job.completed")
    rx.stop()
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.servers.loopback import LoopbackHTTPServer


@dataclass(frozen=True)
class ReceivedWebhook:
    """One request as it arrived. `status` is what the receiver answered (2xx only in `.events`)."""

    webhook_id: str | None
    type: str | None  # the standard envelope's "type"; None for legacy bodies, which have no type
    path: str
    headers: dict[str, str]
    json: Any
    body: bytes
    arrived_at: float  # time.time()
    status: int
    reason: str | None = None  # why it was rejected (signature errors), else None


@dataclass
class _Failure:
    """Answer `count` more verified deliveries with `status`: all of them, or only those of event
    `type` / with `webhook_id` when given."""

    count: int
    status: int
    type: str | None = None
    webhook_id: str | None = None

    def takes(self, kind: str | None, webhook_id: str | None) -> bool:
        return (
            self.count > 0
            and (self.type is None or self.type == kind)
            and (self.webhook_id is None or self.webhook_id == webhook_id)
        )


@dataclass
class _Plan:
    """Failures still to simulate. Guarded by the receiver's lock."""

    failures: list[_Failure] = field(default_factory=list)
    outage_status: int | None = None  # every delivery answered this until end_outage()
    stall_count: int = 0
    stall_s: float = 0.0
    release: threading.Event = field(default_factory=threading.Event)


class WebhookReceiver:
    """Verified, accepted deliveries go to `.events`; every verified arrival (whatever it was answered) to
    `.attempts`; requests failing verification (answered 401) to `.rejected`. Lists are in arrival order."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret or "whsec_" + base64.b64encode(os.urandom(32)).decode()
        self._webhook = Webhook(self.secret)
        self._cond = threading.Condition()
        self._plan = _Plan()
        self.events: list[ReceivedWebhook] = []
        self.attempts: list[ReceivedWebhook] = []
        self.rejected: list[ReceivedWebhook] = []
        self._http = LoopbackHTTPServer(_make_handler(self), name="webhook-receiver")

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> WebhookReceiver:
        self._http.start()
        return self

    def stop(self) -> None:
        self._plan.release.set()
        self._http.stop()

    @property
    def url(self) -> str:
        return self._http.url

    def reset(self) -> None:
        """Forget recorded requests and planned failures; release any stalled request."""
        with self._cond:
            self._plan.release.set()
            self._plan = _Plan()
            self.events.clear()
            self.attempts.clear()
            self.rejected.clear()

    # -- simulated outages -------------------------------------------------------------------------------

    def fail_next(
        self, n: int, status: int = 500, *, type: str | None = None, webhook_id: str | None = None
    ) -> None:
        """Answer the next `n` verified deliveries with `status` (a 3xx also gets a Location header);
        with `type` or `webhook_id`, only deliveries of that event type / with that id are failed and
        counted. Each call adds such a rule; a delivery is failed by the first rule that takes it."""
        with self._cond:
            self._plan.failures.append(_Failure(n, status, type, webhook_id))

    def outage(self, status: int = 503) -> None:
        """Answer every verified delivery with `status` until `end_outage()` (after `fail_next` rules)."""
        with self._cond:
            self._plan.outage_status = status

    def end_outage(self) -> None:
        with self._cond:
            self._plan.outage_status = None

    def stall_next(self, n: int, seconds: float) -> None:
        """Hold the next `n` verified requests for `seconds` before answering (to trip client timeouts);
        `reset()` and `stop()` release them early, so a long stall costs a test nothing."""
        with self._cond:
            self._plan.stall_count, self._plan.stall_s = n, seconds

    # -- waiting -----------------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[ReceivedWebhook], bool], timeout: float = 5.0) -> ReceivedWebhook:
        """The first accepted event matching `predicate`; AssertionError with everything seen on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching webhook within {timeout}s\n{self.dump()}")
                self._cond.wait(left)

    def wait_for_attempts(
        self, n: int, predicate: Callable[[ReceivedWebhook], bool] = lambda a: True, timeout: float = 5.0
    ) -> list[ReceivedWebhook]:
        """The verified arrivals matching `predicate` (whatever they were answered), once there are at
        least `n`; AssertionError with everything seen on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matching = [a for a in self.attempts if predicate(a)]
                if len(matching) >= n:
                    return matching
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fewer than {n} matching attempts within {timeout}s\n{self.dump()}")
                self._cond.wait(left)

    def dump(self) -> str:
        def line(r: ReceivedWebhook) -> str:
            return f"  {r.status} {r.path} id={r.webhook_id} type={r.type} {r.reason or ''} {r.body[:200]!r}"

        sections = [("accepted", self.events), ("attempts", self.attempts), ("rejected", self.rejected)]
        return "\n".join(f"{name} ({len(rs)}):\n" + "\n".join(map(line, rs)) for name, rs in sections)

    # -- request handling (called on server threads) -----------------------------------------------------

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        arrived = time.time()

        def received(status: int, payload: Any = None, reason: str | None = None) -> ReceivedWebhook:
            kind = payload.get("type") if isinstance(payload, dict) else None
            webhook_id = headers.get("webhook-id")
            return ReceivedWebhook(webhook_id, kind, path, headers, payload, body, arrived, status, reason)

        try:
            payload = self._webhook.verify(body, headers)
        except (WebhookVerificationError, ValueError) as exc:  # ValueError: malformed headers or JSON
            self._record(self.rejected, received(401, reason=f"{type(exc).__name__}: {exc}"))
            return 401, {}
        status, stall_s, release = self._next_answer(payload, headers.get("webhook-id"))
        if stall_s:
            # The request is still accepted afterwards, as a slow real receiver would: the client timed
            # out but the event arrived, which is exactly why deliveries must be idempotent.
            release.wait(stall_s)
        self._record(self.attempts, received(status, payload))
        if 200 <= status < 300:
            self._record(self.events, received(status, payload))
        return status, {"location": "/redirected"} if 300 <= status < 400 else {}

    def _next_answer(self, payload: Any, webhook_id: str | None) -> tuple[int, float, threading.Event]:
        """(status, seconds to stall, event that ends the stall early) for a verified request."""
        kind = payload.get("type") if isinstance(payload, dict) else None
        with self._cond:
            plan = self._plan
            stall_s = 0.0
            if plan.stall_count > 0:
                plan.stall_count -= 1
                stall_s = plan.stall_s
            failure = next((f for f in plan.failures if f.takes(kind, webhook_id)), None)
            if failure is not None:
                failure.count -= 1
                return failure.status, stall_s, plan.release
            if plan.outage_status is not None:
                return plan.outage_status, stall_s, plan.release
            return 204, stall_s, plan.release

    def _record(self, into: list[ReceivedWebhook], received: ReceivedWebhook) -> None:
        with self._cond:
            into.append(received)
            self._cond.notify_all()


def _make_handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do, so pooled clients are exercised

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra = receiver._handle(self.path, headers, body)
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
            pass

    return Handler
