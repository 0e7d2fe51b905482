"""A fake EC2 instance metadata service (IMDSv2, "required" mode) on a free loopback port.

It answers the way AWS does for the paths the daemon uses (DESIGN §3):

- `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: N` (1..21600) → 200, a random
  token (text/plain) valid for N seconds, the TTL echoed in the same header. TTL missing or out of range
  → 400; any `X-Forwarded-For` header → 403 (AWS refuses tokens to requests that went through a proxy);
  `GET` on the token path → 405.
- Every `GET /latest/meta-data/...` needs `X-aws-ec2-metadata-token` with a valid, unexpired token, else
  401 — even for paths that do not exist.
- `spot/instance-action` → 404 until `trigger_interruption()`, then
  `{"action": "terminate", "time": "2026-11-23T08:22:00Z"}`;
  `events/recommendations/rebalance` → 404 until `trigger_rebalance()`, then `{"noticeTime": "…"}`;
  `instance-id` → `i-0123456789abcdef0`; anything else → 404. Bodies are text/plain, as on EC2.

Test controls are Python methods: `trigger_interruption`, `trigger_rebalance`, `clear`, `expire_tokens`,
`set_down` (requests are dropped without an answer, as if the service vanished), `serve` (a fixed answer
for one path, e.g. malformed JSON), `reset`; `.requests` logs every metadata request with its answer.

    imds = FakeIMDS().start()
    ... MetadataClient(imds.url) ...
    imds.trigger_interruption("terminate", in_seconds=120)
    imds.stop()

Manual drills. `python -m tests.servers.imds --port 1338` serves it until Ctrl-C. Point a worker at
it (its IMDS URL setting = http://127.0.0.1:1338) and play AWS by hand. The `/__control/...` paths are
NOT part of AWS: they exist only in this fake, so an operator can act while the worker runs:

    curl -X POST 'http://127.0.0.1:1338/__control/interruption?action=terminate&in=120'
    curl -X POST  http://127.0.0.1:1338/__control/rebalance
    curl -X POST  http://127.0.0.1:1338/__control/clear            # no notices, as before
    curl -X POST  http://127.0.0.1:1338/__control/expire-tokens    # every token answers 401 from now on
    curl -X POST 'http://127.0.0.1:1338/__control/down?for=30'     # metadata requests dropped for 30 s
    curl -X POST  http://127.0.0.1:1338/__control/up
    curl          http://127.0.0.1:1338/__control/state            # notices, counters, down or not
    # what the worker sees, the IMDSv2 way:
    TOKEN=$(curl -sX PUT http://127.0.0.1:1338/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')
    curl -H "X-aws-ec2-metadata-token: $TOKEN" http://127.0.0.1:1338/latest/meta-data/spot/instance-action

Control requests stay out of `.requests` (the log is of what a metadata client did).
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.servers.loopback import LoopbackHTTPServer

TOKEN_PATH = "/latest/api/token"
META_PREFIX = "/latest/meta-data/"
INSTANCE_ACTION_PATH = META_PREFIX + "spot/instance-action"
REBALANCE_PATH = META_PREFIX + "events/recommendations/rebalance"
INSTANCE_ID_PATH = META_PREFIX + "instance-id"
CONTROL_PREFIX = "/__control/"

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL_S = 21600
"""AWS's limit on a token's lifetime (6 hours)."""

SPOT_ACTIONS = ("terminate", "stop", "hibernate")


def imds_time(moment: datetime) -> str:
    """ISO 8601 UTC with a Z and whole seconds, as IMDS writes times: 2026-11-23T08:22:00Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _whole_seconds(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


@dataclass(frozen=True)
class IMDSRequest:
    """One metadata request as answered. `status` is None when it was dropped (`set_down`)."""

    method: str
    path: str
    status: int | None
    at: float  # time.time()
    had_token: bool


class FakeIMDS:
    """The fake service. Thread-safe: tests drive it while the client polls it from another thread."""

    def __init__(self, *, instance_id: str = "i-0123456789abcdef0", control: bool = True) -> None:
        self.instance_id = instance_id
        # Whether the /__control/ paths answer (they never exist on AWS; off, they are 404 like any path).
        self.control = control
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # token -> time.monotonic() it expires at
        self._interruption: str | None = None  # body of spot/instance-action, None = 404
        self._rebalance: str | None = None  # body of events/recommendations/rebalance, None = 404
        self._overrides: dict[str, tuple[int, str]] = {}  # path -> (status, body), set by serve()
        self._down_until = 0.0  # time.monotonic(); math.inf = down until set_down(False)
        self.requests: list[IMDSRequest] = []
        self.counters: Counter[tuple[str, int | None]] = Counter()  # (method, status) -> requests
        self._http: LoopbackHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self, port: int = 0, host: str = "127.0.0.1") -> FakeIMDS:
        self._http = LoopbackHTTPServer(_make_handler(self), name="fake-imds", host=host).start(port)
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()

    @property
    def url(self) -> str:
        assert self._http is not None, "fake IMDS not started"
        return self._http.url

    def reset(self) -> None:
        """Per-test state: no notices, no tokens, no overrides, up, empty request log."""
        with self._lock:
            self._tokens.clear()
            self._interruption = self._rebalance = None
            self._overrides.clear()
            self._down_until = 0.0
            self.requests.clear()
            self.counters.clear()

    # -- what AWS would do -------------------------------------------------------------------------------

    def trigger_interruption(self, action: str = "terminate", in_seconds: float = 120) -> datetime:
        """Post a spot interruption notice; returns its deadline (UTC, whole seconds) as served."""
        if action not in SPOT_ACTIONS:
            raise ValueError(f"action must be one of {SPOT_ACTIONS}, not {action!r}")
        deadline = _whole_seconds(datetime.now(UTC) + timedelta(seconds=in_seconds))
        with self._lock:
            self._interruption = json.dumps({"action": action, "time": imds_time(deadline)})
        return deadline

    def trigger_rebalance(self) -> datetime:
        """Post a rebalance recommendation; returns its noticeTime (UTC, whole seconds) as served."""
        notice_time = _whole_seconds(datetime.now(UTC))
        with self._lock:
            self._rebalance = json.dumps({"noticeTime": imds_time(notice_time)})
        return notice_time

    def clear(self) -> None:
        """Withdraw both notices (the paths answer 404 again)."""
        with self._lock:
            self._interruption = self._rebalance = None

    def expire_tokens(self) -> None:
        """Every token handed out so far stops working: the next GET with one gets 401."""
        with self._lock:
            self._tokens.clear()

    def set_down(self, down: bool, *, for_s: float | None = None) -> None:
        """Drop every metadata request without an answer (the connection is closed), until
        `set_down(False)` or for `for_s` seconds. Control paths keep working."""
        with self._lock:
            if not down:
                self._down_until = 0.0
            else:
                self._down_until = math.inf if for_s is None else time.monotonic() + for_s

    @property
    def down(self) -> bool:
        with self._lock:
            return time.monotonic() < self._down_until

    def serve(self, path: str, body: str | None, status: int = 200) -> None:
        """Answer GETs of `path` (with a valid token) with this status and body; `body=None` removes it."""
        with self._lock:
            if body is None:
                self._overrides.pop(path, None)
            else:
                self._overrides[path] = (status, body)

    # -- what tests read ---------------------------------------------------------------------------------

    def count(self, method: str | None = None, path: str | None = None, status: int | None = None) -> int:
        """How many logged requests match all the given fields."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method)
                and (path is None or r.path == path)
                and (status is None or r.status == status)
            )

    @property
    def token_requests(self) -> int:
        """Tokens handed out (successful PUTs)."""
        return self.count("PUT", TOKEN_PATH, 200)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "instance_action": json.loads(self._interruption) if self._interruption else None,
                "rebalance": json.loads(self._rebalance) if self._rebalance else None,
                "down": time.monotonic() < self._down_until,
                "live_tokens": sum(1 for exp in self._tokens.values() if exp > time.monotonic()),
                "requests": {f"{m} {s}": n for (m, s), n in sorted(self.counters.items(), key=str)},
            }

    def dump(self) -> str:
        with self._lock:
            return "\n".join(f"  {r.method} {r.path} -> {r.status}" for r in self.requests)

    # -- request handling (called on server threads) -----------------------------------------------------

    def _answer(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int | None, str, dict[str, str]]:
        """(status, body, extra headers) for one metadata request; status None = drop the connection."""
        with self._lock:
            status, body, extra = self._answer_locked(method, path, headers)
            record = IMDSRequest(method, path, status, time.time(), TOKEN_HEADER.lower() in headers)
            self.requests.append(record)
            self.counters[(method, status)] += 1
        return status, body, extra

    def _answer_locked(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int | None, str, dict[str, str]]:
        now = time.monotonic()
        if now < self._down_until:
            return None, "", {}
        if path == TOKEN_PATH:
            if method != "PUT":
                return 405, "", {}
            if "x-forwarded-for" in headers:
                return 403, "", {}
            raw_ttl = headers.get(TTL_HEADER.lower(), "").strip()
            if not raw_ttl.isdigit() or not 1 <= int(raw_ttl) <= MAX_TTL_S:
                return 400, "", {}
            token = secrets.token_urlsafe(42)
            self._tokens[token] = now + int(raw_ttl)
            return 200, token, {TTL_HEADER: raw_ttl}
        if method != "GET":
            return 405, "", {}
        if path == "/latest" or path.startswith("/latest/"):
            expires = self._tokens.get(headers.get(TOKEN_HEADER.lower(), ""))
            if expires is None or expires <= now:
                return 401, "", {}
        if path in self._overrides:
            status, override = self._overrides[path]
            return status, override, {}
        body_for = {
            INSTANCE_ACTION_PATH: self._interruption,
            REBALANCE_PATH: self._rebalance,
            INSTANCE_ID_PATH: self.instance_id,
        }
        body = body_for.get(path)
        return (404, "", {}) if body is None else (200, body, {})

    def _control(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        """Operator drills (not AWS): (status, JSON-able answer)."""
        name = path[len(CONTROL_PREFIX) :]
        arg = {k: v[-1] for k, v in query.items()}
        if method == "GET" and name == "state":
            return 200, self.state()
        if method != "POST":
            return 405, {"error": "control actions are POSTs"}
        try:
            if name == "interruption":
                deadline = self.trigger_interruption(
                    arg.get("action", "terminate"), float(arg.get("in", 120))
                )
                return 200, {"action": arg.get("action", "terminate"), "time": imds_time(deadline)}
            if name == "rebalance":
                return 200, {"noticeTime": imds_time(self.trigger_rebalance())}
            if name == "clear":
                self.clear()
            elif name == "expire-tokens":
                self.expire_tokens()
            elif name == "down":
                self.set_down(True, for_s=float(arg["for"]) if "for" in arg else None)
            elif name == "up":
                self.set_down(False)
            else:
                return 404, {"error": f"no control action {name!r}"}
        except ValueError as exc:
            return 400, {"error": str(exc)}
        return 200, self.state()


def _make_handler(imds: FakeIMDS) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # IMDS keeps connections alive
        server_version = "EC2ws"  # what IMDS calls itself in its Server header
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._dispatch("GET")

        def do_PUT(self) -> None:  # noqa: N802
            self._dispatch("PUT")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._dispatch("DELETE")

        def _dispatch(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            split = urlsplit(self.path)
            if imds.control and split.path.startswith(CONTROL_PREFIX):
                status, payload = imds._control(method, split.path, parse_qs(split.query))
                self._send(status, json.dumps(payload) + "\n", {}, "application/json")
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer, body, extra = imds._answer(method, split.path, headers)
            if answer is None:
                # Gone without a word: the client sees the connection closed before any response.
                self.close_connection = True
                return
            self._send(answer, body, extra, "text/plain")

        def _send(self, status: int, body: str, extra: dict[str, str], content_type: str) -> None:
            data = body.encode()
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.servers.imds",
        description="A fake EC2 instance metadata service (IMDSv2) for spot-notice drills. "
        "The /__control/ paths are not AWS; see this module's docstring for the curl commands.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1338, help="port to listen on (default 1338)")
    parser.add_argument("--instance-id", default="i-0123456789abcdef0")
    args = parser.parse_args(argv)
    imds = FakeIMDS(instance_id=args.instance_id).start(args.port, args.host)
    print(f"fake IMDS at {imds.url} (Ctrl-C to stop)", flush=True)
    print(f"  notice:  curl -X POST '{imds.url}/__control/interruption?action=terminate&in=120'", flush=True)
    print(f"  clear:   curl -X POST {imds.url}/__control/clear", flush=True)
    print(f"  state:   curl {imds.url}/__control/state", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        imds.stop()


if __name__ == "__main__":
    main()
