"""A whole-request deadline for httpx, which has only per-phase timeouts.

httpx's read timeout restarts with every read, so a server that drip-feeds its answer one byte at a
time holds a request forever. `SocketDeadline` learns the request's socket from httpx's trace hook as
the connection opens and, when the deadline passes, shuts it down: the blocked read returns at once and
httpx raises a transport error, which the caller reports as the deadline (`fired`).

    deadline = SocketDeadline(30.0)
    request.extensions["trace"] = deadline.trace
    request.headers["Connection"] = "close"  # a new connection, so its socket is seen being opened
    with deadline:
        response = client.send(request, stream=True)
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any


class SocketDeadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx/httpcore's trace extension: keep the socket of the connection this request opens."""
        if event == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            with self._lock:
                self._sock = sock
                if self.fired and sock is not None:  # the deadline passed while connecting
                    _shut(sock)

    def __enter__(self) -> SocketDeadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._sock is not None:
                _shut(self._sock)


def _shut(sock: socket.socket) -> None:
    # shutdown, not close: it wakes a read blocked in another thread; httpx closes the socket itself.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
