"""A hostile HTTP receiver on a raw socket, for what well-behaved test servers cannot do: answer one byte
at a time for ever (a slow-loris receiver), hold a request until the test lets it go, or answer with any
status and headers.

    with RawHttpServer("drip") as slow:    # "drip" | "hold" | "answer"
        slow.url                           # http://127.0.0.1:PORT/
        slow.requests                      # how many requests were read
        slow.release()                     # "hold": answer 204 now
"""

from __future__ import annotations

import contextlib
import socket
import threading

DRIP_INTERVAL_S = 0.05
DRIP_FOR_S = 120.0  # far beyond any deadline a test sets: the client must cut it off


class RawHttpServer:
    def __init__(self, mode: str, *, answer: bytes = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"):
        self.mode = mode
        self.answer = answer
        self.requests = 0
        self._released = threading.Event()
        self._closed = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/hook"
        self._thread = threading.Thread(target=self._serve, name=f"raw-http-{mode}", daemon=True)

    def __enter__(self) -> RawHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed.set()
        self._released.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def release(self) -> None:
        self._released.set()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            _read_request(conn)
            self.requests += 1
            if self.mode == "drip":
                self._drip(conn)
            elif self.mode == "hold":
                self._released.wait(DRIP_FOR_S)
                conn.sendall(self.answer)
            else:
                conn.sendall(self.answer)

    def _drip(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000
        for byte in head:
            if self._closed.wait(DRIP_INTERVAL_S):
                return
            conn.sendall(bytes([byte]))


def _read_request(conn: socket.socket) -> bytes:
    """Headers, then as many body bytes as Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    length = lengths[0] if lengths else 0
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
