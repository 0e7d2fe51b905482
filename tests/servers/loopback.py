"""What every HTTP test server here shares: a `ThreadingHTTPServer` on a loopback port, served from a
daemon thread, started and stopped the same way.

    http = LoopbackHTTPServer(handler_class, name="fake-imds")
    http.start()          # port 0 = a free one; a restart reuses the port, so clients' URLs stay valid
    http.url              # http://127.0.0.1:PORT
    http.stop()
"""

from __future__ import annotations

import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

POLL_S = 0.05
"""How often the serving thread checks for `stop()`: stopping a test server costs at most this."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a stalled handler must not hold up stop()

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse-DNS lookup (getfqdn) that can stall on odd hosts; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up mid-answer is an expected part of the outage tests;
        # anything else is a bug in a test server, so its traceback goes to the test's output.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class LoopbackHTTPServer:
    """One HTTP server on `host` (loopback by default), answered by `handler` on per-request threads."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, name: str, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.name = name
        self.host = host
        self.port = 0
        """The port it listens on once started (kept after `stop()`, so a restart reuses it)."""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int | None = None) -> LoopbackHTTPServer:
        """Listen (on `port`, else the last port, else a free one) and serve; a no-op if running."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port if port is None else port), self.handler)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL_S,), name=f"{self.name}-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; requests still being answered are abandoned."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        assert self.port, f"{self.name} not started"
        return f"http://{self.host}:{self.port}"
