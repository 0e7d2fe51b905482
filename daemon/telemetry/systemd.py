"""systemd's notify protocol (`sd_notify`): tell the service manager we are ready, alive and stopping.

The unit (`ops/systemd/capture-daemon@.service`) is `Type=notify` with `NotifyAccess=main` and
`WatchdogSec=`. systemd passes `NOTIFY_SOCKET` (a path, or an abstract socket name starting with `@`)
and, with a watchdog, `WATCHDOG_USEC` and `WATCHDOG_PID`. Each message is one AF_UNIX datagram of
newline-separated `KEY=VALUE` lines: `READY=1` once serving, `STATUS=…` for `systemctl status`,
`STOPPING=1` and `EXTEND_TIMEOUT_USEC=…` while a job checkpoints during a stop, `WATCHDOG=1` to say the
main loop is alive. Outside systemd (no `NOTIFY_SOCKET`) every call is a cheap no-op.

The watchdog is fed from the worker's main loop, never from a thread of its own: before each dequeue,
in the idle waits and in the heartbeat loop that watches a running job. A free-running thread would go
on pinging while the loop it vouches for is stuck (a wedged Redis call, a deadlock), which is exactly
what the watchdog is there to catch; then systemd aborts the worker (SIGABRT) and restarts it.
`watchdog_ping()` is rate-limited (one datagram per third of the interval at most), so the loop may call
it as often as it likes.

Only the process that read the environment sends: with `NotifyAccess=main` systemd drops (and logs)
datagrams from any other PID, and a forked work-horse must not vouch for its parent anyway. That is also
why no `MAINPID=` is sent: it would only matter for a sender that is not the main process. The variables
are removed from `os.environ` once read, as `sd_notify(unset_environment=1)` does, so work-horses and
their subprocesses (ffmpeg, COLMAP) neither inherit nor misuse them.

A failed send never raises: a missing or full socket is logged once as a warning and the daemon goes on
(systemd will then act on the missing READY or WATCHDOG, which is the right outcome).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, MutableMapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
"""Where systemd listens for our datagrams; set only for `Type=notify` (or `NotifyAccess=`) units."""

WATCHDOG_USEC = "WATCHDOG_USEC"
"""The unit's `WatchdogSec=` in microseconds; absent when the watchdog is off."""

WATCHDOG_PID = "WATCHDOG_PID"
"""The PID the watchdog is meant for; a process with another PID inherited it and must ignore it."""

PINGS_PER_INTERVAL = 3
"""`watchdog_ping()` sends at most this many pings per watchdog interval (systemd suggests at least two):
one late loop iteration then still leaves two thirds of the interval before systemd gives up."""

_KEY = re.compile(r"[A-Z][A-Z0-9_]*")


class Notifier:
    """Sends sd_notify messages to one socket, from the process that created it only."""

    def __init__(
        self,
        address: str | None = None,
        *,
        watchdog_usec: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._address = _socket_address(address)
        self._pid = os.getpid()
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ping: float | None = None
        self._warned = False
        # NOTIFY_SOCKET as given, or None when notifications are off.
        self.address = address if self._address is not None else None
        # WatchdogSec in seconds, or None when the watchdog is off (or not meant for this process).
        self.watchdog_interval_s: float | None = (
            watchdog_usec / 1_000_000 if watchdog_usec and self._address is not None else None
        )

    @classmethod
    def from_env(
        cls, environ: MutableMapping[str, str] | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> Notifier:
        """Read NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID from `environ` (default `os.environ`) and
        remove them from it. Call once per process, early, before anything forks."""
        env = os.environ if environ is None else environ
        address = env.pop(NOTIFY_SOCKET, None) or None
        raw_usec = env.pop(WATCHDOG_USEC, None)
        raw_pid = env.pop(WATCHDOG_PID, None)
        return cls(address, watchdog_usec=_watchdog_usec(raw_usec, raw_pid), clock=clock)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def describe(self) -> str:
        """One line for the start-up log."""
        if not self.enabled:
            return "systemd notify: off (NOTIFY_SOCKET unset)"
        if self.watchdog_interval_s is None:
            return f"systemd notify: {self.address}, watchdog off"
        return f"systemd notify: {self.address}, watchdog {self.watchdog_interval_s:g}s"

    # -- messages ----------------------------------------------------------------------------------

    def notify(self, **fields: object) -> bool:
        """Send `KEY=VALUE` lines in one datagram; True when it was handed to the socket."""
        for key in fields:
            if not _KEY.fullmatch(key):
                raise ValueError(f"not an sd_notify field name: {key!r}")
        # A newline inside a value would start a field of its own (STATUS="x\nREADY=1").
        lines = (f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        return self._send("\n".join(lines).encode())

    def ready(self, status: str | None = None) -> bool:
        """The worker is serving: systemd ends `start` (Type=notify) and starts After= units."""
        return self.notify(READY=1, **_status(status))

    def status(self, text: str) -> bool:
        """A one-line state shown by `systemctl status` (e.g. "idle", "running job 1234")."""
        return self.notify(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        """The worker has begun to stop (SIGTERM, spot notice)."""
        return self.notify(STOPPING=1, **_status(status))

    def extend_timeout(self, usec: int) -> bool:
        """Ask for `usec` more microseconds in the current start/stop phase (e.g. a long checkpoint
        during a stop). systemd never shortens a timeout this way; repeat before it runs out."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(usec))

    def watchdog(self) -> bool:
        """Send WATCHDOG=1 now, whatever the rate limit. Prefer `watchdog_ping()` in loops."""
        return self.notify(WATCHDOG=1)

    def watchdog_ping(self) -> bool:
        """Send WATCHDOG=1 if a third of the interval has passed since the last ping; otherwise (or with
        the watchdog off) do nothing. Cheap: call it from every turn of the main loop."""
        interval = self.watchdog_interval_s
        if interval is None:
            return False
        now = self._clock()
        with self._lock:
            if self._last_ping is not None and now - self._last_ping < interval / PINGS_PER_INTERVAL:
                return False
            self._last_ping = now  # also after a failed send: no retry storm from a hot loop
        return self.watchdog()

    # -- the socket --------------------------------------------------------------------------------

    def _send(self, payload: bytes) -> bool:
        if self._address is None:
            return False
        if os.getpid() != self._pid:
            return False  # a forked child: systemd would drop it, and it must not vouch for the parent
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never block the main loop on a full socket queue: a lost ping is better than a hang.
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except (OSError, ValueError) as exc:
            self._warn_once(payload, exc)
            return False
        return True

    def _warn_once(self, payload: bytes, exc: Exception) -> None:
        first_line = payload.split(b"\n", 1)[0].decode(errors="replace")
        if self._warned:
            log.debug("sd_notify %s to %s failed: %s", first_line, self.address, exc)
            return
        self._warned = True
        log.warning(
            "sd_notify %s to %s failed: %s (systemd may miss READY/WATCHDOG; further failures at debug)",
            first_line,
            self.address,
            exc,
        )


def _socket_address(address: str | None) -> str | bytes | None:
    """NOTIFY_SOCKET → a sendto() address: a path, or b"\\0name" for an abstract socket ("@name")."""
    if not address:
        return None
    if address.startswith("/"):
        return address
    if address.startswith("@") and len(address) > 1:
        return b"\0" + address[1:].encode()
    # systemd ≥ 254 may pass "vsock:…" (for VMs); we only ever run under a local manager.
    log.warning("NOTIFY_SOCKET=%r is not a unix socket; systemd notifications are off", address)
    return None


def _watchdog_usec(raw_usec: str | None, raw_pid: str | None) -> int | None:
    """WATCHDOG_USEC if it is valid and meant for this process (WATCHDOG_PID absent or ours)."""
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
        pid = int(raw_pid) if raw_pid else None
    except ValueError:
        log.warning("WATCHDOG_USEC=%r / WATCHDOG_PID=%r unreadable; watchdog off", raw_usec, raw_pid)
        return None
    if usec <= 0:
        return None
    if pid is not None and pid != os.getpid():
        log.debug("WATCHDOG_PID=%d is not this process (%d); watchdog off", pid, os.getpid())
        return None
    return usec


def _status(status: str | None) -> dict[str, str]:
    return {"STATUS": status} if status is not None else {}
