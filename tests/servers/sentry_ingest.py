"""A loopback stand-in for Sentry's ingest endpoint: accepts envelopes (`POST /api/<project>/envelope/`),
decodes them (gzip or plain) and keeps every event item, so tests can see what the SDK really sent."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.servers.loopback import LoopbackHTTPServer


class SentryIngest:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ingest._take_envelope(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

        self._http = LoopbackHTTPServer(Handler, name="sentry-ingest").start()

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self._http.port}/1"

    def _take_envelope(self, body: bytes) -> None:
        lines = body.split(b"\n")
        for header, payload in zip(lines[1::2], lines[2::2], strict=False):
            try:
                item_type = json.loads(header).get("type")
                if item_type == "event":
                    with self._cond:
                        self.events.append(json.loads(payload))
                        self._cond.notify_all()
            except ValueError:
                continue

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        raise AssertionError(f"no matching Sentry event; got {[self.describe(e) for e in self.events]}")

    @staticmethod
    def describe(event: dict[str, Any]) -> str:
        values = (event.get("exception") or {}).get("values") or [{}]
        message = event.get("message") or (event.get("logentry") or {}).get("message")
        return f"{values[-1].get('type')}: {values[-1].get('value')} / {message}"

    def close(self) -> None:
        self._http.stop()
