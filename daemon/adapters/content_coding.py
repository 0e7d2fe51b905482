"""Response bodies read under our own bounds, not httpx's.

We ask servers for `Accept-Encoding: identity`, but some compress anyway. httpx decodes a whole read at
once and decodes every coding listed, so a few hundred bytes of stacked gzip (`gzip, gzip`) become a
64 MiB chunk before any size check can see it (measured: 272 bytes → 64 MiB). Here the wire bytes are
counted as they arrive, one content coding at most is decoded (gzip or deflate: what a server that
ignores our header sends), and never more than `PIECE_BYTES` of output per step, so the caller's size
cap fires within one piece of the limit whatever the compression ratio.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

import httpx

from ..errors import InputError

PIECE_BYTES = 1 << 20
"""The most decoded output produced at once (zlib's `max_length`)."""

_DECODERS: dict[str, Callable[[], zlib._Decompress]] = {
    "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "deflate": lambda: zlib.decompressobj(),  # RFC 9110's "deflate" is the zlib format
}


def decoded_chunks(response: httpx.Response, where: str, max_wire_bytes: int) -> Iterator[bytes]:
    """The body's bytes as the file has them: raw if the server sent it as is, else decoded piece by
    piece. Raises InputError for a coding we do not decode (or several stacked) and for more wire bytes
    than `max_wire_bytes`."""
    codings = [
        c.strip().lower()
        for c in response.headers.get("content-encoding", "").split(",")
        if c.strip() and c.strip().lower() != "identity"
    ]
    if len(codings) > 1 or (codings and codings[0] not in _DECODERS):
        raise InputError(
            f"{where}: content encoding {', '.join(codings)!r} refused (we asked for the file as is)",
            code="unsupported_encoding",
        )
    wire = _wire_counted(response, where, max_wire_bytes)
    if not codings:
        yield from wire
        return
    decoder = _DECODERS[codings[0]]()
    try:
        for raw in wire:
            data = raw
            while data and not decoder.eof:
                piece = decoder.decompress(data, PIECE_BYTES)
                data = decoder.unconsumed_tail
                if piece:
                    yield piece
        while not decoder.eof and (piece := decoder.decompress(b"", PIECE_BYTES)):
            yield piece  # output zlib still holds after the last input
    except zlib.error as exc:
        raise InputError(
            f"{where}: body does not decode as {codings[0]} ({exc})", code="corrupt_body"
        ) from None


def _wire_counted(response: httpx.Response, where: str, max_wire_bytes: int) -> Iterator[bytes]:
    wire = 0
    for raw in response.iter_raw():
        wire += len(raw)
        if wire > max_wire_bytes:
            raise InputError(f"{where}: more than {max_wire_bytes} bytes on the wire", code="input_too_large")
        yield raw


def read_capped(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of a streamed response's raw body (an error page, say), the rest left
    unread: a server's answer to our upload must not be able to fill our memory."""
    got = bytearray()
    for raw in response.iter_raw():
        got += raw[: limit - len(got)]
        if len(got) >= limit:
            break
    return bytes(got)
