"""Signed HTTP callbacks: what a job tells its caller, and the one place the daemon POSTs to them.

Scheme (DESIGN.md §5): Standard Webhooks. Each event has a `webhook-id` that stays the same on every retry
(the receiver's idempotency key); each attempt carries a fresh `webhook-timestamp` and signature, since
receivers reject timestamps older than five minutes.

Delivery is at-least-once: a receiver may see the same `webhook-id` twice (a lost 2xx, a crash between
sending and recording) and must treat the repeat as a no-op. `CallbackSender.deliver` makes ONE attempt and
classifies the result; the retry loop (when, how often, `backoff_delay`) belongs to the caller, and a failed
callback never turns a finished job into a failed one.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import json
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from ..errors import ConfigError
from ..spec.fields import redact_url
from .deadline import SocketDeadline

EVENT_TYPES = (
    "job.started",
    "job.progress",
    "job.requeued",
    "job.completed",
    "job.failed",
    "job.canceled",
)
"""Every event a job can emit; anything else is a programming error."""

FORMATS = ("standard", "legacy")
"""`standard`: our documented envelope. `legacy`: the RunPod workers' final-webhook shape (seed 001)."""

SECRET_PREFIX = "whsec_"
"""Standard Webhooks secrets are `whsec_` + base64 of the raw HMAC key."""

MIN_SECRET_BYTES = 24
"""The Standard Webhooks spec asks for 24–64 random bytes; shorter keys are refused at start-up."""

LEGACY_MODEL_OUTPUT = "splat.ply"
"""The output whose URI legacy clients receive as `model_url`."""

_LEGACY_FINAL_STATUS = {"job.completed": "completed", "job.failed": "failed", "job.canceled": "canceled"}
_RESERVED_DATA_KEYS = frozenset({"job_id", "attempt", "seq", "metadata"})


@dataclass(frozen=True)
class CallbackEvent:
    """One event, ready to sign and send. Rebuilding it (e.g. after a crash) gives the same `webhook_id`."""

    webhook_id: str
    url: str
    body: bytes
    type: str
    job_id: str


def build_event(
    *,
    url: str,
    type: str,
    job_id: str,
    attempt: int,
    seq: int,
    data: Mapping[str, Any],
    fmt: str = "standard",
    metadata: Mapping[str, str] | None = None,
    at: datetime | None = None,
) -> CallbackEvent | None:
    """Build the event, or return None when `fmt` has no such event (legacy clients get only the final one).

    `seq` numbers the job's events within one attempt, so two progress events differ in id while a
    retry of the same event does not.
    """
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown callback event type {type!r}; expected one of {EVENT_TYPES}")
    meta = dict(metadata or {})
    payload: dict[str, Any] | None
    if fmt == "standard":
        payload = _standard_payload(type, job_id, attempt, seq, data, meta, at)
    elif fmt == "legacy":
        payload = _legacy_payload(type, data, meta)
        if payload is None:
            return None
    else:
        raise ValueError(f"unknown callback format {fmt!r}; expected one of {FORMATS}")
    return CallbackEvent(
        webhook_id=event_id(job_id=job_id, attempt=attempt, type=type, seq=seq),
        url=url,
        body=_encode(payload),
        type=type,
        job_id=job_id,
    )


def event_id(*, job_id: str, attempt: int, type: str, seq: int) -> str:
    """A stable id: a hash, so no state is needed to give a rebuilt event the id it had before."""
    # JSON-encoding the tuple keeps fields apart: ("a:b", 1) and ("a", "b:1") cannot collide.
    key = json.dumps([job_id, attempt, type, seq], separators=(",", ":")).encode()
    return "msg_" + hashlib.sha256(key).hexdigest()[:32]


def _standard_payload(
    type: str,
    job_id: str,
    attempt: int,
    seq: int,
    data: Mapping[str, Any],
    meta: dict[str, str],
    at: datetime | None,
) -> dict[str, Any]:
    clash = _RESERVED_DATA_KEYS & data.keys()
    if clash:
        raise ValueError(f"callback data may not set {sorted(clash)}: build_event fills them in")
    return {
        "type": type,
        "timestamp": _iso_z(at or datetime.now(UTC)),
        "data": {"job_id": job_id, "attempt": attempt, "seq": seq, **data, "metadata": meta},
    }


def _legacy_payload(type: str, data: Mapping[str, Any], meta: dict[str, str]) -> dict[str, Any] | None:
    """Seed 001's final webhook: {status, project_id, model_url, file_size} or {status, project_id, error}.

    Legacy clients know only this one webhook, so started/progress/requeued events have no legacy form.
    """
    status = _LEGACY_FINAL_STATUS.get(type)
    if status is None:
        return None
    payload: dict[str, Any] = {"status": status, "project_id": meta.get("project_id")}
    if "scene_id" in meta:  # the video worker (seed 002) keyed its jobs by scene_id
        payload["scene_id"] = meta["scene_id"]
    if status == "completed":
        model = (data.get("outputs") or {}).get(LEGACY_MODEL_OUTPUT) or {}
        payload["model_url"] = model.get("uri")
        payload["file_size"] = model.get("size")
    else:
        payload["error"] = (data.get("error") or {}).get("message")
    return payload


def _encode(payload: Mapping[str, Any]) -> bytes:
    # Compact and sorted so the same payload always gives the same bytes; ASCII-only so the body is the
    # same whether a receiver signs over bytes or over a decoded string.
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode("ascii")


def _iso_z(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("callback timestamps must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CallbackSigner:
    """Signs events with the shared secret, using the `standardwebhooks` package the receivers verify with."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(_decode_secret(secret))

    def __repr__(self) -> str:
        return "CallbackSigner(secret=<redacted>)"

    def headers(self, event: CallbackEvent, now: float | None = None) -> dict[str, str]:
        """The three Standard Webhooks headers for one attempt at `now` (unix seconds, default: the clock)."""
        ts = int(now if now is not None else time.time())
        signature = self._webhook.sign(
            msg_id=event.webhook_id,
            timestamp=datetime.fromtimestamp(ts, tz=UTC),
            data=event.body.decode("utf-8"),
        )
        return {"webhook-id": event.webhook_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def _decode_secret(secret: str) -> bytes:
    """Validate CALLBACK_SECRET and return the raw key. Messages never echo the value."""
    if not isinstance(secret, str) or not secret.strip().startswith(SECRET_PREFIX):
        raise ConfigError(f"CALLBACK_SECRET: must start with {SECRET_PREFIX!r} followed by base64")
    encoded = secret.strip()[len(SECRET_PREFIX) :]
    try:
        # Strict (validate=True): the package's own decoder silently drops stray characters, which would
        # sign with a different key than the operator thinks. Unpadded base64 is accepted, as it does.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"CALLBACK_SECRET: the part after {SECRET_PREFIX!r} is not valid base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(f"CALLBACK_SECRET: the key must be at least {MIN_SECRET_BYTES} random bytes")
    return key


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one delivery attempt came to. `error` is safe to log: it never holds a query string."""

    ok: bool
    status: int | None
    retryable: bool
    error: str | None
    elapsed_s: float
    retry_after_s: float | None = None  # what a 429 or 503 asked for (Retry-After), if anything


RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
"""4xx answers that mean "not now" rather than "never": timeout, conflict (a receiver busy with the same id),
too early, rate limited. Every 5xx is retryable too."""


class CallbackSender:
    """Makes single delivery attempts over one pooled `httpx.Client`. Never raises for network or HTTP errors.

    Redirects are not followed: a receiver must give its final URL, and following one would let a
    receiver bounce a signed request past the SSRF guard to an address of its choosing.

    `pin` (the daemon passes `fetch.pinned_request`) builds each request against the address the SSRF
    guard approved, so a DNS answer that changes between check and connect (rebinding) cannot redirect
    a signed request; a refusal from it is final unless the error says it is retryable (a DNS hiccup).
    Without `pin`, `check_url` runs before each attempt and httpx resolves the host again.
    `timeout_s` bounds each phase (connect, write, each read) and the attempt as a whole.
    """

    def __init__(
        self,
        signer: CallbackSigner,
        *,
        timeout_s: float = 10.0,
        check_url: Callable[[str], None] | None = None,
        pin: Callable[..., httpx.Request] | None = None,
        user_agent: str = "capture-daemon/1",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self._check_url = check_url
        self._pin = pin
        self._clock = clock
        self._timeout_s = timeout_s
        # trust_env=False: no proxy variables, and no ~/.netrc credentials sent to customer URLs.
        self._client = httpx.Client(
            timeout=timeout_s,
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": user_agent, "content-type": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> CallbackSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def deliver(self, event: CallbackEvent) -> DeliveryOutcome:
        """One attempt: guard the URL, sign afresh (same id, new timestamp), POST, classify the answer."""
        started = time.monotonic()

        def outcome(
            ok: bool, status: int | None, retryable: bool, error: str | None, retry_after: float | None = None
        ) -> DeliveryOutcome:
            return DeliveryOutcome(ok, status, retryable, error, time.monotonic() - started, retry_after)

        headers = self._signer.headers(event, now=self._clock())
        try:
            request = self._build_request(event, headers)
        except Exception as exc:  # the SSRF guard refused (fail closed)
            retryable = bool(getattr(exc, "retryable", False))
            return outcome(False, None, retryable, _redact(f"callback URL refused: {exc}", event.url))
        # The whole delivery, not each read, is bounded: a receiver that drip-feeds its answer one byte
        # at a time would otherwise hold the drainer for ever. A new connection each time, so the
        # deadline sees the socket it must cut (callbacks are few; keep-alive buys nothing here).
        deadline = SocketDeadline(self._timeout_s)
        request.extensions["trace"] = deadline.trace
        request.headers["Connection"] = "close"
        try:
            with deadline:
                # stream: we need only the status, so a receiver's (possibly huge) body is never read.
                response = self._client.send(request, stream=True)
                try:
                    status, retry_after = response.status_code, response.headers.get("retry-after")
                finally:
                    response.close()
        except httpx.TimeoutException as exc:
            return outcome(False, None, True, f"timed out after {self._timeout_s:g}s ({type(exc).__name__})")
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return outcome(False, None, False, _redact(f"bad callback URL: {exc}", event.url))
        except httpx.TransportError as exc:
            if deadline.fired:
                return outcome(False, None, True, f"timed out: no whole answer within {self._timeout_s:g}s")
            return outcome(False, None, True, _redact(f"{type(exc).__name__}: {exc}", event.url))
        ok, retryable, error = classify_status(status)
        wait = parse_retry_after(retry_after, self._clock) if status in (429, 503) else None
        return outcome(ok, status, retryable, error, wait)

    def _build_request(self, event: CallbackEvent, headers: dict[str, str]) -> httpx.Request:
        if self._pin is not None:
            return self._pin(self._client, "POST", event.url, content=event.body, headers=headers)
        if self._check_url is not None:
            self._check_url(event.url)
        return self._client.build_request("POST", event.url, content=event.body, headers=headers)


def parse_retry_after(value: str | None, clock: Callable[[], float] = time.time) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - clock())


def classify_status(status: int) -> tuple[bool, bool, str | None]:
    """(ok, retryable, error) for an HTTP status."""
    if 200 <= status < 300:
        return True, False, None
    if 300 <= status < 400:
        return False, False, f"HTTP {status}: redirects are not followed; configure the final callback URL"
    if status == 410:
        return False, False, "HTTP 410 Gone: the receiver has retired this callback URL"
    if status in RETRYABLE_STATUSES or status >= 500:
        return False, True, f"HTTP {status}"
    return False, False, f"HTTP {status}: rejected by the receiver"


def _redact(message: str, url: str) -> str:
    """Remove the URL's secret-bearing parts from a message that may quote it (httpx or the guard might)."""
    message = message.replace(url, redact_url(url))
    try:
        parts = urllib.parse.urlsplit(url)
        # With their delimiters, so a one-letter query cannot blank out every such letter in the text.
        pieces = {
            f"?{parts.query}": "?<redacted>" if parts.query else "",
            f"#{parts.fragment}": "#<redacted>" if parts.fragment else "",
            f":{parts.password}@": ":<redacted>@" if parts.password else "",
        }
    except ValueError:
        return message
    for piece, replacement in pieces.items():
        if replacement:
            message = message.replace(piece, replacement)
    return message


def backoff_delay(
    tries: int, *, base_s: float = 2.0, cap_s: float = 600.0, rng: random.Random | None = None
) -> float:
    """Seconds to wait before the next attempt, after `tries` failed ones: uniform(0, min(cap, base·2^tries)).

    Full jitter, because callbacks fail together: when a receiver has an outage every worker's callbacks
    fail at once, and plain exponential backoff would bring them back at once too. Drawing the whole delay
    at random spreads them out; AWS's "Exponential Backoff and Jitter" found it does the least total work
    of the jitter variants while keeping the expected wait at half the capped exponential.
    """
    if tries < 0:
        raise ValueError("tries must be >= 0")
    # Capping the exponent keeps 2**tries from overflowing a float after very many tries.
    ceiling = min(cap_s, base_s * 2.0 ** min(tries, 64))
    return rng.uniform(0.0, ceiling) if rng is not None else random.uniform(0.0, ceiling)
