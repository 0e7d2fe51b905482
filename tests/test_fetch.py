"""daemon.adapters.fetch: downloads of user-supplied URLs, against a real HTTP server on 127.0.0.1.

Happy paths use a policy that exempts exactly 127.0.0.1/32; the SSRF refusals use the DEFAULT policy.
Nothing here talks to the internet: refused URLs are refused before any connection is made.
"""

from __future__ import annotations

import datetime
import functools
import gzip
import hashlib
import ipaddress
import ssl
import sys
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from daemon.adapters import fetch
from daemon.adapters.fetch import FetchPolicy, check_url, fetch_to_file, pinned_request
from daemon.errors import DownloadError, InputError, JobError
from daemon.spec.fields import REDACTED_MAX_CHARS, redact_url
from tests.servers.s3 import free_ports

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 800  # ~200 KiB, starts with the JPEG magic
FILES = {
    "photo.jpg": (JPEG, "image/jpeg"),
    "small.txt": (b"hello\n", "text/plain; charset=utf-8"),
    "page.html": (b"<html><body>not a photo</body></html>", "text/html"),
}
LOOPBACK_ONLY = (ipaddress.ip_network("127.0.0.1/32"),)
DEFAULT = FetchPolicy()


def is_jpeg(content_type: str, head: bytes) -> bool:
    return content_type == "image/jpeg" and head.startswith(b"\xff\xd8\xff")


# --- a small HTTP server with misbehaving routes -------------------------------------------------


@dataclass
class Server:
    host: str
    port: int
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        route, _, arg = parts.path.strip("/").partition("/")
        getattr(self, f"route_{route.replace('-', '_')}", self.route_missing)(arg, query)

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def route_missing(self, arg: str, query: dict[str, str]) -> None:
        self.send(404, b"no such route")

    def route_file(self, arg: str, query: dict[str, str]) -> None:
        body, content_type = FILES[arg]
        self.send(200, body, {"Content-Type": content_type})

    def route_echo_host(self, arg: str, query: dict[str, str]) -> None:
        self.send(200, self.headers["Host"].encode(), {"Content-Type": "text/plain"})

    def route_status(self, arg: str, query: dict[str, str]) -> None:
        self.send(int(arg), b"status page")

    def route_redirect(self, arg: str, query: dict[str, str]) -> None:
        self.send(int(query.get("status", "302")), headers={"Location": query["to"]})

    def route_chain(self, arg: str, query: dict[str, str]) -> None:
        left = int(arg)
        if left == 0:
            self.route_file("small.txt", query)
        else:
            self.send(302, headers={"Location": f"/chain/{left - 1}"})

    def route_drip(self, arg: str, query: dict[str, str]) -> None:
        """1000 declared bytes, one every 50 ms: each read is quick, the whole takes 50 s."""
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.05)

    def route_stall(self, arg: str, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "10")
        self.end_headers()
        self.wfile.write(b"xx")
        self.wfile.flush()
        time.sleep(60)  # far beyond any cap a test sets: the client must cut it off

    def route_huge_declared(self, arg: str, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**12))
        self.end_headers()
        self.wfile.write(b"x" * 1024)

    def route_encoded(self, arg: str, query: dict[str, str]) -> None:
        """A body sent with Content-Encoding (our Accept-Encoding: identity ignored), from ENCODED."""
        coding, body = ENCODED[arg]()
        self.send(200, body, {"Content-Type": "application/octet-stream", "Content-Encoding": coding})

    def route_endless(self, arg: str, query: dict[str, str]) -> None:
        """No Content-Length: only the byte count can stop this one."""
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        for _ in range(1000):  # 64 MiB at most, so a broken client cannot hang the server thread
            self.wfile.write(b"y" * 65536)

    def route_truncated(self, arg: str, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"z" * 10)
        self.close_connection = True


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stalled handlers must not hold up the end of the session

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hanging up is the point here
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def serve(host: str) -> Iterator[Server]:
    httpd = QuietServer((host, 0), Handler)
    server = Server(host, httpd.server_address[1])
    httpd.hits = server.hits  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def http_server() -> Iterator[Server]:
    yield from serve("127.0.0.1")


@pytest.fixture(scope="module")
def other_loopback_server() -> Iterator[Server]:
    """On 127.0.0.2, outside the allow list: it must never see a request."""
    yield from serve("127.0.0.2")


@functools.cache
def _zeros_gzipped(mib: int, layers: int) -> bytes:
    body = bytes(mib << 20)
    for _ in range(layers):
        body = gzip.compress(body, compresslevel=9, mtime=0)
    return body


ENCODED = {
    "photo-gzip": lambda: ("gzip", gzip.compress(FILES["photo.jpg"][0], mtime=0)),
    "photo-deflate": lambda: ("deflate", zlib.compress(FILES["photo.jpg"][0])),
    "bomb": lambda: ("gzip", _zeros_gzipped(256, 1)),  # 256 MiB of zeros in ~250 KiB
    "stacked": lambda: ("gzip, gzip", _zeros_gzipped(64, 2)),  # 64 MiB in a few hundred bytes
    "brotli": lambda: ("br", b"\x0b\x02\x80hello\x03"),
    "not-gzip": lambda: ("gzip", b"this is not gzip at all"),
}


def policy(**overrides: object) -> FetchPolicy:
    values: dict[str, object] = {"allow_networks": LOOPBACK_ONLY, "timeout_s": 10.0, "connect_timeout_s": 2.0}
    return FetchPolicy(**{**values, **overrides})  # type: ignore[arg-type]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- happy paths -----------------------------------------------------------------------------------


def test_fetch_writes_the_file_with_size_hash_and_type(http_server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "in" / "photo.jpg"

    got = fetch_to_file(http_server.url("/file/photo.jpg"), dest, policy(), accept=is_jpeg)

    assert dest.read_bytes() == JPEG
    assert (got.path, got.size, got.sha256) == (dest, len(JPEG), hashlib.sha256(JPEG).hexdigest())
    assert got.content_type == "image/jpeg"
    assert got.final_url == http_server.url("/file/photo.jpg")
    assert leftovers(dest.parent) == ["photo.jpg"]  # no temp file left behind


def test_accept_gets_media_type_and_first_bytes(http_server: Server, tmp_path: Path) -> None:
    seen: list[tuple[str, bytes]] = []

    def accept(content_type: str, head: bytes) -> bool:
        seen.append((content_type, head))
        return True

    fetch_to_file(http_server.url("/file/photo.jpg"), tmp_path / "a", policy(), accept=accept)
    fetch_to_file(http_server.url("/file/small.txt"), tmp_path / "b", policy(), accept=accept)

    assert seen == [("image/jpeg", JPEG[: fetch.SNIFF_BYTES]), ("text/plain", b"hello\n")]


def test_redirects_are_followed_relative_and_absolute(http_server: Server, tmp_path: Path) -> None:
    absolute = http_server.url("/redirect?to=" + http_server.url("/file/small.txt"))
    relative = http_server.url("/redirect?status=307&to=/file/small.txt")

    for i, url in enumerate((absolute, relative)):
        got = fetch_to_file(url, tmp_path / f"{i}.txt", policy())
        assert got.path.read_bytes() == b"hello\n"
        assert got.final_url == http_server.url("/file/small.txt")


def test_redirect_chain_within_the_limit(http_server: Server, tmp_path: Path) -> None:
    got = fetch_to_file(http_server.url("/chain/3"), tmp_path / "f", policy(max_redirects=3))

    assert got.final_url == http_server.url("/chain/0")


def test_connection_goes_to_the_checked_address_with_the_real_host_header(
    http_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a rebinding DNS name: first 127.0.0.1 (allowed), then the metadata service.
    answers = [[ipaddress.ip_address("127.0.0.1")]]
    calls: list[str] = []

    def rebinding_resolver(host: str, port: int) -> list[fetch.IPAddress]:
        calls.append(host)
        return answers.pop(0) if answers else [ipaddress.ip_address("169.254.169.254")]

    monkeypatch.setattr(fetch, "_resolve", rebinding_resolver)

    # When we fetch through that name
    url = f"http://rebind.test:{http_server.port}/echo-host"
    got = fetch_to_file(url, tmp_path / "host.txt", policy())

    # Then the name was resolved once, the checked address was dialled, and Host named the real host.
    assert calls == ["rebind.test"]
    assert got.path.read_bytes() == f"rebind.test:{http_server.port}".encode()


def test_pinned_request_keeps_hostname_for_host_header_and_tls() -> None:
    with fetch.new_client() as client:
        request = pinned_request(client, "GET", "https://localhost:8443/a?b=1", policy())

    assert request.url.host == "127.0.0.1"
    assert (request.url.port, request.url.path, request.url.query) == (8443, "/a", b"b=1")
    assert request.headers["host"] == "localhost:8443"
    assert request.extensions["sni_hostname"] == "localhost"


def test_public_addresses_pass_the_check_without_network() -> None:
    assert check_url("https://93.184.215.14/x", DEFAULT) == [ipaddress.ip_address("93.184.215.14")]
    assert check_url("http://[2606:4700:4700::1111]/", DEFAULT) == [
        ipaddress.ip_address("2606:4700:4700::1111")
    ]


# --- limits and HTTP failures ----------------------------------------------------------------------


def test_slow_drip_hits_the_wall_clock_cap(http_server: Server, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        fetch_to_file(http_server.url("/drip"), tmp_path / "drip", policy(timeout_s=0.6))

    assert caught.value.code == "download_timeout" and caught.value.retryable
    assert "/drip" in caught.value.message
    assert time.monotonic() - started < 20.0  # the drip alone would take 50 s
    assert leftovers(tmp_path) == []


def test_a_silent_server_is_cut_off_by_the_time_cap(http_server: Server, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        fetch_to_file(http_server.url("/stall"), tmp_path / "stall", policy(timeout_s=0.5))

    assert caught.value.code == "download_timeout"
    assert time.monotonic() - started < 20.0  # the server would stay silent for 60 s
    assert leftovers(tmp_path) == []


def test_declared_length_over_the_cap_is_refused_before_reading(http_server: Server, tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        fetch_to_file(http_server.url("/huge-declared"), tmp_path / "huge", policy(max_bytes=10**6))

    assert caught.value.code == "input_too_large" and not caught.value.retryable
    assert "1000000 byte limit" in caught.value.message
    assert leftovers(tmp_path) == []


def test_undeclared_body_is_cut_at_the_cap(http_server: Server, tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        fetch_to_file(http_server.url("/endless"), tmp_path / "endless", policy(max_bytes=1024 * 1024))

    assert caught.value.code == "input_too_large"
    assert leftovers(tmp_path) == []


def test_content_the_job_did_not_promise_is_refused(http_server: Server, tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        fetch_to_file(http_server.url("/file/page.html"), tmp_path / "photo.jpg", policy(), accept=is_jpeg)

    assert caught.value.code == "unexpected_content" and "text/html" in caught.value.message
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("status", "error", "code", "retryable"),
    [
        (404, InputError, "input_not_found", False),
        (410, InputError, "input_not_found", False),
        (403, InputError, "input_http_error", False),
        (408, DownloadError, "download_http_error", True),
        (429, DownloadError, "download_http_error", True),
        (500, DownloadError, "download_http_error", True),
        (503, DownloadError, "download_http_error", True),
    ],
)
def test_http_status_maps_to_error(
    http_server: Server, tmp_path: Path, status: int, error: type[JobError], code: str, retryable: bool
) -> None:
    with pytest.raises(error) as caught:
        fetch_to_file(http_server.url(f"/status/{status}"), tmp_path / "f", policy())

    assert (caught.value.code, caught.value.retryable) == (code, retryable)
    assert f"answered {status}" in caught.value.message


def test_errors_never_show_the_query_string(http_server: Server, tmp_path: Path) -> None:
    url = http_server.url("/status/404?X-Amz-Signature=s3cr3t&X-Amz-Credential=AKIA")
    with pytest.raises(InputError) as caught:
        fetch_to_file(url, tmp_path / "f", policy())

    assert http_server.url("/status/404") in caught.value.message
    assert "s3cr3t" not in str(caught.value) and "AKIA" not in str(caught.value)


def test_truncated_body_is_a_retryable_download_error(http_server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        fetch_to_file(http_server.url("/truncated"), tmp_path / "f", policy())

    assert caught.value.code == "download_connection_failed" and caught.value.retryable
    assert leftovers(tmp_path) == []


def test_refused_connection_is_a_retryable_download_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        fetch_to_file(f"http://127.0.0.1:{free_ports(1)[0]}/nothing-listens", tmp_path / "f", policy())

    assert caught.value.code == "download_connection_failed" and caught.value.retryable


def test_too_many_redirects(http_server: Server, tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        fetch_to_file(http_server.url("/chain/4"), tmp_path / "f", policy(max_redirects=3))

    assert caught.value.code == "too_many_redirects"
    assert caught.value.message == f"GET {http_server.url('/chain/4')}: more than 3 redirects"


# --- SSRF guard: refusals with the DEFAULT policy ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        ("file:///etc/passwd", "url_scheme_not_allowed", "scheme 'file' is not http or https"),
        ("ftp://example.com/x", "url_scheme_not_allowed", "scheme 'ftp' is not http or https"),
        ("gopher://example.com:70/_x", "url_scheme_not_allowed", "scheme 'gopher' is not http or https"),
        ("http:///etc/passwd", "url_invalid", "the URL has no host"),
        ("http://0177.0.0.1/", "url_invalid", "malformed URL"),
        ("http://user:pw@example.com/", "url_credentials_not_allowed", "credentials in the URL"),
        ("http://127.0.0.1/", "url_address_forbidden", "127.0.0.1 resolves to 127.0.0.1 (loopback)"),
        ("http://localhost:8080/", "url_address_forbidden", "localhost resolves to 127.0.0.1 (loopback)"),
        ("http://[::1]/", "url_address_forbidden", "::1 resolves to ::1 (loopback)"),
        ("http://[::]/", "url_address_forbidden", "(unspecified)"),
        ("http://0.0.0.0/", "url_address_forbidden", "0.0.0.0 resolves to 0.0.0.0 (unspecified)"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "url_address_forbidden",
            "169.254.169.254 (link-local, e.g. cloud metadata)",
        ),
        ("http://[fe80::1]/", "url_address_forbidden", "fe80::1 (link-local"),
        ("http://10.0.0.1/", "url_address_forbidden", "10.0.0.1 resolves to 10.0.0.1 (private)"),
        ("http://192.168.1.1/", "url_address_forbidden", "192.168.1.1 (private)"),
        ("http://172.16.5.4/", "url_address_forbidden", "172.16.5.4 (private)"),
        ("http://100.64.0.1/", "url_address_forbidden", "100.64.0.1 (not globally routable)"),
        ("http://224.0.0.1/", "url_address_forbidden", "224.0.0.1 (multicast)"),
        ("http://[fd00::1]/", "url_address_forbidden", "fd00::1 (private)"),
        (
            "http://[::ffff:127.0.0.1]/",
            "url_address_forbidden",
            "(IPv4-mapped 127.0.0.1: loopback)",
        ),
        (
            "http://[::ffff:169.254.169.254]/",
            "url_address_forbidden",
            "IPv4-mapped 169.254.169.254: link-local",
        ),
        ("http://[2002:a00:1::1]/", "url_address_forbidden", "(6to4 for 10.0.0.1: private)"),
        ("http://[64:ff9b::7f00:1]/", "url_address_forbidden", "64:ff9b::7f00:1 ("),
        ("http://2130706433/", "url_address_forbidden", "2130706433 resolves to 127.0.0.1 (loopback)"),
        ("http://0x7f.0.0.1/", "url_address_forbidden", "0x7f.0.0.1 resolves to 127.0.0.1 (loopback)"),
        ("http://0x7f.1/", "url_address_forbidden", "0x7f.1 resolves to 127.0.0.1 (loopback)"),
        ("http://127.1:8080/", "url_address_forbidden", "127.1 resolves to 127.0.0.1 (loopback)"),
    ],
)
def test_default_policy_refuses(url: str, code: str, message: str, tmp_path: Path) -> None:
    dest = tmp_path / "f"
    with pytest.raises(InputError) as caught:
        fetch_to_file(url, dest, DEFAULT)

    assert caught.value.code == code and not caught.value.retryable
    assert message in caught.value.message
    assert "pw" not in caught.value.message
    assert not dest.exists()


def test_any_private_answer_among_public_ones_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [ipaddress.ip_address(a) for a in ("93.184.215.14", "2606:4700::1", "10.20.30.40")]
    monkeypatch.setattr(fetch, "_resolve", lambda host, port: answers)

    with pytest.raises(InputError) as caught:
        check_url("https://mostly-public.example/x", DEFAULT)

    assert caught.value.code == "url_address_forbidden"
    assert "mostly-public.example resolves to 10.20.30.40 (private)" in caught.value.message


def test_unresolvable_host_is_refused() -> None:
    with pytest.raises(InputError) as caught:
        check_url("http://no-such-host.invalid/", DEFAULT)

    assert caught.value.code == "url_unresolvable"


@pytest.mark.parametrize(
    ("target", "refused"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 (link-local, e.g. cloud metadata)"),
        ("http://127.0.0.2:{other}/file/small.txt", "127.0.0.2 (loopback)"),
        ("http://[::ffff:127.0.0.2]:{other}/file/small.txt", "IPv4-mapped 127.0.0.2: loopback"),
        ("file:///etc/passwd", "scheme 'file' is not http or https"),
    ],
)
def test_redirect_to_a_forbidden_address_is_refused_on_the_hop(
    http_server: Server, other_loopback_server: Server, tmp_path: Path, target: str, refused: str
) -> None:
    # Given a server we allow (exactly 127.0.0.1/32) that redirects somewhere we do not
    url = http_server.url("/redirect?to=" + target.format(other=other_loopback_server.port))

    with pytest.raises(InputError) as caught:
        fetch_to_file(url, tmp_path / "f", policy())

    assert caught.value.code in ("url_address_forbidden", "url_scheme_not_allowed")
    assert refused in caught.value.message
    assert other_loopback_server.hits == []  # refused before connecting
    assert leftovers(tmp_path) == []


# --- redaction -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://b.s3.amazonaws.com/k/x.jpg?X-Amz-Signature=abc#frag", "https://b.s3.amazonaws.com/k/x.jpg"),
        ("http://user:secret@example.com:8080/p?q=1", "http://example.com:8080/p"),
        ("http://[::1]:9000/a", "http://[::1]:9000/a"),
        ("http://example.com/a\x1b[31mred", "http://example.com/a%1B[31mred"),
        ("http://[::1/", "<malformed url>"),
        # What callbacks need of it too: a webhook URL's token never shows, whatever the host.
        ("https://u:pw@h.example:8443/p/q?token=s#frag", "https://h.example:8443/p/q"),
        ("https://u:pw@[2001:db8::1]:8443/hook?token=s", "https://[2001:db8::1]:8443/hook"),
        ("http://h.example:99999/hook?token=s", "<malformed url>"),
        # A newline would forge a log line: urlsplit drops it.
        ("http://example.com/a\nINFO forged line", "http://example.com/aINFO forged line"),
        ("", ""),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_redact_url_caps_the_length_after_dropping_the_query() -> None:
    # Given a hostile URL with a huge path and a presigned query
    url = "https://h.example/" + "a" * 5000 + "?X-Amz-Signature=sekrit"
    # When it is redacted, Then it is cut to the cap and the query never appears
    redacted = redact_url(url)
    assert len(redacted) == REDACTED_MAX_CHARS
    assert redacted.startswith("https://h.example/aaa") and "sekrit" not in redacted


def test_redact_url_takes_any_url_object() -> None:
    assert redact_url(httpx.URL("https://h.example/p?token=s")) == "https://h.example/p"


def test_httpx_is_not_asked_to_follow_or_proxy() -> None:
    with fetch.new_client() as client:
        assert client.follow_redirects is False and client.trust_env is False
        assert isinstance(client, httpx.Client)


# --- TLS through the pin: SNI and certificate checks still use the hostname ------------------------


def make_tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA and a certificate for the DNS name `localhost` only (no IP in it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, ca_key: Any
    ) -> Any:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(
                issuer.subject if issuer else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
            )
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )
        if issuer is None:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(ca_key, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("test CA", ca_key, None, ca_key)
    leaf = cert("localhost", leaf_key, ca, ca_key)
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    client_ctx = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server_ctx, client_ctx


def test_https_through_the_pin_verifies_the_hostname(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an https server on 127.0.0.1 whose certificate names only `localhost`
    server_ctx, client_ctx = make_tls_contexts(tmp_path)
    sni_seen: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni_seen.append(name)
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    httpd.hits = []  # type: ignore[attr-defined]
    httpd.socket = server_ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    # ...and a client that trusts the test CA (production uses the system/certifi roots)
    monkeypatch.setattr(fetch, "new_client", lambda: httpx.Client(trust_env=False, verify=client_ctx))
    try:
        # When we fetch by name, the pinned connection dials 127.0.0.1 but speaks TLS to "localhost"
        got = fetch_to_file(f"https://localhost:{port}/echo-host", tmp_path / "host.txt", policy())
        assert got.path.read_bytes() == f"localhost:{port}".encode()
        assert sni_seen == ["localhost"]

        # ...and by bare IP the same certificate does not match: verification is really on.
        with pytest.raises(DownloadError) as caught:
            fetch_to_file(f"https://127.0.0.1:{port}/echo-host", tmp_path / "ip.txt", policy())
        assert caught.value.code == "download_connection_failed"
        assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- content codings a server sends although we asked for identity ---------------------------------------


@pytest.mark.parametrize("route", ["photo-gzip", "photo-deflate"])
def test_a_compressed_answer_is_saved_as_the_file_itself(http_server: Server, tmp_path: Path, route) -> None:
    got = fetch_to_file(http_server.url(f"/encoded/{route}"), tmp_path / "photo.jpg", policy())
    photo = FILES["photo.jpg"][0]
    assert (tmp_path / "photo.jpg").read_bytes() == photo
    assert (got.size, got.sha256) == (len(photo), hashlib.sha256(photo).hexdigest())


def test_a_gzip_bomb_is_stopped_at_the_cap_without_ever_inflating_in_memory(
    http_server: Server, tmp_path: Path
) -> None:
    # Given 256 MiB of zeros sent gzipped (~250 KiB on the wire), and a 1 MiB cap
    http_server.url("/encoded/bomb")
    ENCODED["bomb"]()  # compressed before measuring
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as caught:
            fetch_to_file(http_server.url("/encoded/bomb"), tmp_path / "bomb", policy(max_bytes=1 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then it is refused as too large, having decoded at most a piece past the cap at any moment (httpx
    # alone inflates each 64 KiB read at once: tens of MiB before any check)
    assert caught.value.code == "input_too_large" and not caught.value.retryable
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("route", "code", "words"),
    [
        ("stacked", "unsupported_encoding", "content encoding 'gzip, gzip' refused"),
        ("brotli", "unsupported_encoding", "content encoding 'br' refused"),
        ("not-gzip", "corrupt_body", "body does not decode as gzip"),
    ],
)
def test_codings_we_do_not_decode_are_refused(
    http_server: Server, tmp_path: Path, route, code, words
) -> None:
    with pytest.raises(InputError) as caught:
        fetch_to_file(http_server.url(f"/encoded/{route}"), tmp_path / "x", policy())
    assert caught.value.code == code and not caught.value.retryable
    assert words in caught.value.message
    assert leftovers(tmp_path) == []
