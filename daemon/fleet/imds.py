"""The EC2 instance metadata service (IMDSv2): a tiny client shared by the spot watcher (`spot.py`) and
the fleet identity (`identity.py`).

IMDSv2 token flow: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: N` (1..21600)
returns a token, sent back with every GET as `X-aws-ec2-metadata-token`. We ask for the longest TTL (6 h)
and refresh shortly before it runs out; a 401 means the token expired or was refused, so we fetch a new
one and retry once. IMDSv1 (no token) is never used: our instances require v2.

The service is reached directly with `http.client`, never through `urllib` (which honours HTTP_PROXY):
a proxy cannot reach a link-local address, and AWS refuses tokens to requests carrying `X-Forwarded-For`.

Hop limit: IMDSv2 token responses carry an IP TTL of the instance's `HttpPutResponseHopLimit`. Inside a
container behind a bridge the answer needs 2 hops, so with the default of 1 the PUT times out and the
worker concludes "not on EC2". Our instances keep the limit at 1 and run the worker on the host.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from ..config import DEFAULT_IMDS_URL
from ..errors import DaemonError

log = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
META_PREFIX = "/latest/meta-data/"

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"

MAX_TOKEN_TTL_S = 21600
"""AWS's longest token lifetime (6 h); we ask for it, so a token costs one PUT per 6 hours."""

TOKEN_REFRESH_MARGIN_S = 60.0
"""A token is replaced when less than this is left (or a tenth of its TTL, if smaller), never used
to its last second: a GET sent just before expiry would arrive just after it."""

TIMEOUT_S = 1.0
"""IMDS is on the instance and answers in milliseconds; one second is plenty, and it bounds the wait
off EC2, where 169.254.169.254 does not answer at all."""


class MetadataUnavailable(DaemonError):  # noqa: N818 - reads as what happened
    """IMDS gave no usable answer. `status` is the HTTP status, or None when nothing answered at all
    (connection refused or reset, timeout): off EC2, or an outage."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MetadataClient:
    """A tiny IMDSv2 client: fetches and refreshes its token, and GETs metadata paths. Thread-safe."""

    def __init__(
        self,
        base_url: str = DEFAULT_IMDS_URL,
        *,
        token_ttl_s: int = MAX_TOKEN_TTL_S,
        timeout_s: float = TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"IMDS URL must be http://host[:port], not {base_url!r}")
        if not 1 <= token_ttl_s <= MAX_TOKEN_TTL_S:
            raise ValueError(f"token_ttl_s must be 1..{MAX_TOKEN_TTL_S}, not {token_ttl_s}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.token_ttl_s = token_ttl_s
        self.timeout_s = timeout_s
        self._host = parts.hostname
        self._port = parts.port or 80
        self._refresh_margin_s = min(TOKEN_REFRESH_MARGIN_S, token_ttl_s / 10)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._clock = clock  # injectable: tests move time instead of waiting for a token to age
        self._token_expires = 0.0  # on self._clock

    def token(self) -> str:
        """A token with more than the refresh margin left, fetched when needed."""
        with self._lock:
            if self._token is None or self._token_expires - self._clock() < self._refresh_margin_s:
                self._token, self._token_expires = self._fetch_token()
            return self._token

    def get(self, path: str) -> str | None:
        """The body of a metadata path (`/latest/meta-data/...`, or relative to it), None if it is 404.
        Raises `MetadataUnavailable` when there is no answer or any other status."""
        full = path if path.startswith("/") else META_PREFIX + path
        status, body = self._get_with_token(full)
        if status == 401:
            # Expired early, or the service restarted and forgot it: one new token, one more try.
            log.debug("IMDS refused the token for %s (401): fetching a new one", full)
            status, body = self._get_with_token(full, refused=True)
        if status == 200:
            return body
        if status == 404:
            return None
        raise MetadataUnavailable(f"GET {self.base_url}{full} answered HTTP {status}", status=status)

    # -- internals ---------------------------------------------------------------------------------------

    def _get_with_token(self, path: str, *, refused: bool = False) -> tuple[int, str]:
        if refused:
            with self._lock:
                self._token = None
        return self._request("GET", path, {TOKEN_HEADER: self.token()})

    def _fetch_token(self) -> tuple[str, float]:
        asked_at = self._clock()  # the token's life is counted from before we asked: errs early
        status, body = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self.token_ttl_s)})
        token = body.strip()
        if status != 200 or not token:
            raise MetadataUnavailable(
                f"PUT {self.base_url}{TOKEN_PATH} answered HTTP {status}", status=status
            )
        return token, asked_at + self.token_ttl_s

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
        # A fresh connection each time: two requests per 5 s to a local service, and no stale keep-alive
        # socket to trip over after an outage.
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            reason = str(exc) or type(exc).__name__
            raise MetadataUnavailable(f"{method} {self.base_url}{path}: {reason}") from exc
        finally:
            conn.close()
