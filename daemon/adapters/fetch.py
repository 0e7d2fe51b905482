"""Downloads of user-supplied URLs, guarded against SSRF (DESIGN §6).

A job may name any URL, so every hop of every download is checked before we connect:

- only http and https, with a host and without credentials;
- the host is resolved once and refused if ANY of its addresses is not globally routable (loopback,
  private, link-local such as the 169.254.169.254 metadata service, multicast, reserved, unspecified,
  IPv4 hidden inside IPv6). The resolver normalises odd literals (`2130706433`, `0x7f.1`), and it is the
  normalised address we judge;
- we then connect to the address we judged, not to a second DNS answer (no DNS rebinding): see
  `pinned_request`;
- redirects are followed by hand, each hop checked again; size and wall-clock time are capped.

URLs may be presigned (their query string is a credential), so every URL that reaches a log line or an
error message goes through `redact_url` (daemon/spec/fields.py) first.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpcore  # noqa: F401 - imported once in the worker, not by every job's first client
import httpx

from ..digest import Sha256Sum
from ..errors import DownloadError, InputError
from ..spec.fields import redact_url
from .content_coding import decoded_chunks

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = ("http", "https")
"""Anything else (file, ftp, gopher, …) reaches places an HTTP download never should."""

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
"""Statuses whose Location we follow (by hand, so that each hop is checked)."""

SNIFF_BYTES = 512
"""How many leading bytes `accept` sees: enough for any magic number we care about."""

_NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for one download. The defaults are the production guard."""

    # Largest body we accept; the download stops as soon as one byte more arrives.
    max_bytes: int = 5 * 1024**3
    # Wall-clock cap for the whole download, redirects included (a slow drip cannot outlive it).
    timeout_s: float = 1800.0
    # Cap on establishing each TCP/TLS connection.
    connect_timeout_s: float = 10.0
    # Hops we follow before giving up; each one is checked like the first.
    max_redirects: int = 5
    # Networks exempt from the address guard (tests use 127.0.0.1/32). Empty in production.
    allow_networks: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class FetchedFile:
    path: Path
    size: int
    sha256: str
    # Media type without parameters, lower-case; "" when the server sent none.
    content_type: str
    # Where the bytes finally came from, redacted (no query string): safe to log.
    final_url: str


def _resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses `host` resolves to, as the resolver normalised them, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def _category(ip: IPAddress) -> str | None:
    """The kind of non-public address `ip` is, or None if it is globally routable."""
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local, e.g. cloud metadata", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _tunnelled_ipv4(ip: ipaddress.IPv6Address) -> Iterator[tuple[str, ipaddress.IPv4Address]]:
    """IPv4 addresses that traffic to `ip` is delivered to by a translator or tunnel."""
    if ip.sixtofour is not None:
        yield "6to4", ip.sixtofour
    if ip.teredo is not None:
        yield "Teredo", ip.teredo[1]
    if any(ip in net for net in _NAT64_PREFIXES):
        yield "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


def _refusal(ip: IPAddress, allow: tuple[IPNetwork, ...]) -> str | None:
    """Why we must not connect to `ip`, or None if we may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # The kernel delivers ::ffff:a.b.c.d to the IPv4 host a.b.c.d, so that is the address to judge
        # (Python 3.11 does not: it calls ::ffff:127.0.0.1 neither loopback nor private).
        inner = _refusal(ip.ipv4_mapped, allow)
        return inner and f"IPv4-mapped {ip.ipv4_mapped}: {inner}"
    if any(ip in net for net in allow):
        return None
    reason = _category(ip)
    if reason is None and isinstance(ip, ipaddress.IPv6Address):
        for label, inner_ip in _tunnelled_ipv4(ip):
            if inner_reason := _category(inner_ip):
                return f"{label} for {inner_ip}: {inner_reason}"
    return reason


def _parse(url: str) -> httpx.URL:
    """`url` parsed by the same parser that will send the request, with scheme/host/credential rules."""
    where = redact_url(url)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise InputError(f"malformed URL {where}", code="url_invalid") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise InputError(
            f"refusing {where}: scheme {parsed.scheme!r} is not http or https", code="url_scheme_not_allowed"
        )
    if not parsed.host:
        raise InputError(f"refusing {where}: the URL has no host", code="url_invalid")
    if parsed.userinfo:
        raise InputError(
            f"refusing {where}: credentials in the URL are not allowed", code="url_credentials_not_allowed"
        )
    return parsed


def check_url(url: str, policy: FetchPolicy) -> list[IPAddress]:
    """Resolve `url`'s host and return its addresses if we may connect to all of them; else InputError."""
    parsed = _parse(url)
    host = parsed.raw_host.decode("ascii")
    where = redact_url(url)
    try:
        addresses = _resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:  # the resolver is struggling, the name may be fine
            raise DownloadError(f"DNS lookup for {where} failed for now", code="dns_failed") from None
        raise InputError(
            f"refusing {where}: host {host!r} does not resolve", code="url_unresolvable"
        ) from None
    if not addresses:
        raise InputError(f"refusing {where}: host {host!r} has no address", code="url_unresolvable")
    for ip in addresses:
        if reason := _refusal(ip, policy.allow_networks):
            raise InputError(
                f"refusing {where}: {host} resolves to {ip} ({reason})", code="url_address_forbidden"
            )
    return addresses


def pinned_request(
    client: httpx.Client,
    method: str,
    url: str,
    policy: FetchPolicy,
    **kwargs: Any,
) -> httpx.Request:
    """A request for `url` that connects to the address `check_url` approved, never to a fresh DNS answer.

    The URL's host is replaced by the approved IP, so the connection pool dials that IP and nothing
    resolves the name again (a rebinding DNS server gets one question, and its first answer is the one
    we judged). The request still names the real host where it matters: the Host header carries the
    original host[:port], and for https the `sni_hostname` extension makes httpcore send the hostname as
    SNI and verify the certificate against it. `client` must have trust_env=False: a proxy would resolve
    the name itself.
    """
    ip = check_url(url, policy)[0]
    target = httpx.URL(url)
    headers = {"Host": target.netloc.decode("ascii"), **kwargs.pop("headers", {})}
    extensions = {"sni_hostname": target.raw_host.decode("ascii")} if target.scheme == "https" else {}
    pinned = target.copy_with(host=str(ip))
    return client.build_request(method, pinned, headers=headers, extensions=extensions, **kwargs)


_TLS = httpx.create_ssl_context(trust_env=False)
"""Built once (loading the CA bundle costs tens of ms) and shared: a context holds no connections, so
forked job processes can use it safely."""


def new_client() -> httpx.Client:
    """An httpx client fit for `pinned_request`: no proxies, no .netrc, no automatic redirects."""
    return httpx.Client(trust_env=False, follow_redirects=False, verify=_TLS)


@contextmanager
def transport_errors(method: str, url: str) -> Iterator[None]:
    """Map httpx's network failures to retryable `DownloadError`s that name the redacted URL."""
    where = f"{method} {redact_url(url)}"
    try:
        yield
    except httpx.ConnectTimeout:
        raise DownloadError(f"{where}: connection timed out", code="download_connection_failed") from None
    except httpx.TimeoutException:
        raise DownloadError(f"{where}: timed out", code="download_timeout") from None
    except httpx.RequestError as exc:  # transport failures, also a body that fails to decode
        # The exception text is a socket/protocol error, never the URL, so it is safe to quote.
        raise DownloadError(
            f"{where}: {type(exc).__name__}: {exc}", code="download_connection_failed"
        ) from None


def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DownloadError(f"GET {redact_url(url)}: took longer than the time cap", code="download_timeout")
    return left


@contextmanager
def _get(client: httpx.Client, url: str, policy: FetchPolicy, deadline: float) -> Iterator[httpx.Response]:
    """One checked, pinned GET hop, streaming; network failures (also while reading) → DownloadError."""
    left = _remaining(deadline, url)
    # httpx's read timeout is per read; the wall-clock cap is enforced between chunks in `_copy_body`.
    timeout = httpx.Timeout(left, connect=min(policy.connect_timeout_s, left))
    # identity: we want the file's own bytes; a server that compresses anyway is decoded by
    # content_coding (one coding, in bounded pieces), never by httpx.
    request = pinned_request(
        client, "GET", url, policy, headers={"Accept-Encoding": "identity"}, timeout=timeout
    )
    with transport_errors("GET", url):
        response = client.send(request, stream=True)
        try:
            yield response
        finally:
            response.close()


def _redirect_target(response: httpx.Response, url: str) -> str | None:
    """The absolute URL a redirect points to (relative to the real URL, not the pinned one), or None."""
    location = response.headers.get("location")
    if response.status_code not in REDIRECT_STATUSES or not location:
        return None
    try:
        return str(httpx.URL(url).join(location))
    except httpx.InvalidURL:
        raise InputError(f"GET {redact_url(url)}: malformed redirect", code="url_invalid") from None


def _raise_for_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    where = f"GET {redact_url(url)} answered {status}"
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise InputError(f"{where}: not found", code="input_not_found")
    if status in (408, 429):  # the server asks us to come back later
        raise DownloadError(f"{where}: try again later", code="download_http_error")
    if status >= 500:
        raise DownloadError(f"{where}: server error", code="download_http_error")
    raise InputError(where, code="input_http_error")


def _too_large(url: str, policy: FetchPolicy) -> InputError:
    return InputError(
        f"GET {redact_url(url)}: larger than the {policy.max_bytes} byte limit", code="input_too_large"
    )


def check_content(accept: Callable[[str, bytes], bool], content_type: str, head: bytes, where: str) -> None:
    """Let the job's `accept` judge a file by its first SNIFF_BYTES (it may raise its own InputError)."""
    if not accept(content_type, head):
        raise InputError(
            f"{where}: content ({content_type or 'no content type'}) is not what the job said",
            code="unexpected_content",
        )


def _copy_body(
    response: httpx.Response,
    out: IO[bytes],
    url: str,
    policy: FetchPolicy,
    deadline: float,
    accept: Callable[[str, bytes], bool] | None,
) -> tuple[int, str]:
    """Stream the body into `out` under the size and time caps; return (size, sha256)."""
    content_type = _media_type(response)
    body, head = Sha256Sum(), b""
    # Each read is seen as it arrives (a slow drip too), decoded by us in bounded pieces, if at all.
    for chunk in decoded_chunks(response, f"GET {redact_url(url)}", policy.max_bytes):
        if body.size + len(chunk) > policy.max_bytes:
            raise _too_large(url, policy)
        _remaining(deadline, url)
        if accept is not None and len(head) < SNIFF_BYTES:
            head += chunk[: SNIFF_BYTES - len(head)]
            if len(head) == SNIFF_BYTES:
                check_content(accept, content_type, head, f"GET {redact_url(url)}")
        body.update(chunk)
        out.write(chunk)
    if accept is not None and len(head) < SNIFF_BYTES:  # short body: judge what there is
        check_content(accept, content_type, head, f"GET {redact_url(url)}")
    return body.size, body.hexdigest()


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _declared_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _save(
    response: httpx.Response,
    url: str,
    dest: Path,
    policy: FetchPolicy,
    deadline: float,
    accept: Callable[[str, bytes], bool] | None,
) -> FetchedFile:
    """Write the body to a temp file beside `dest` and rename it into place only once it is complete."""
    declared = _declared_length(response)
    if declared is not None and declared > policy.max_bytes:
        raise _too_large(url, policy)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            size, sha256 = _copy_body(response, out, url, policy, deadline, accept)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return FetchedFile(dest, size, sha256, _media_type(response), redact_url(url))


def fetch_to_file(
    url: str,
    dest: Path,
    policy: FetchPolicy,
    *,
    accept: Callable[[str, bytes], bool] | None = None,
) -> FetchedFile:
    """Download `url` to `dest` under `policy`; `accept(content_type, first_bytes)` vets the content.

    Raises InputError (not retryable: refused URL or address, 4xx, too large, unexpected content, too
    many redirects) or DownloadError (retryable: timeout, 5xx, 408/429, connection failure).
    The time cap is checked whenever bytes arrive; a server that goes fully silent is cut off by the read
    timeout, itself set to the time left when the hop started, so the worst case is under twice the cap.
    """
    deadline = time.monotonic() + policy.timeout_s
    current = url
    with new_client() as client:
        for _hop in range(policy.max_redirects + 1):
            with _get(client, current, policy, deadline) as response:
                target = _redirect_target(response, current)
                if target is None:
                    _raise_for_status(response, current)
                    fetched = _save(response, current, dest, policy, deadline, accept)
                    log.info("fetched %s -> %s (%d bytes)", redact_url(current), dest, fetched.size)
                    return fetched
            log.info("redirect %s -> %s", redact_url(current), redact_url(target))
            current = target
    raise InputError(
        f"GET {redact_url(url)}: more than {policy.max_redirects} redirects", code="too_many_redirects"
    )
