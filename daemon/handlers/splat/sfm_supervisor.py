"""Running pycolmap under supervision: each call of structure from motion (sfm.py, sfm_matching.py)
runs in a helper thread while the calling thread watches it, and the share of the stage's progress
each sub-step moves.

pycolmap releases the GIL and polls a `CancellationToken` inside its loops, so the calling thread
stays free to report progress, enforce the time limit, poll `should_stop` and take the daemon's
signals (a cancel or preemption raised as an exception in the main thread) within a fraction of a
second; on any of those the running call is cancelled and joined before the exception goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ...errors import JobError

T = TypeVar("T")

POLL_S = 0.2
"""How often the calling thread wakes while pycolmap runs: the latency of a stop or time limit."""

STEP_SPANS: dict[str, tuple[float, float]] = {
    "extract": (0.0, 0.35),
    "match": (0.35, 0.76),
    "map": (0.76, 0.95),
    "undistort": (0.95, 1.0),
}
"""Share of the stage's progress per sub-step: the CPU-time split of the default options on the
bench's 30 photos (extract 53 s, match 61 s, map 28 s, undistort 8 s)."""


class Supervisor:
    """Runs each pycolmap call in a helper thread and watches it from the calling thread."""

    def __init__(
        self, time_limit_s: float, progress: Callable[[float], None], should_stop: Callable[[], bool]
    ) -> None:
        self.time_limit_s = time_limit_s
        self.deadline = time.monotonic() + time_limit_s
        self._report = progress
        self.should_stop = should_stop
        self.timings: dict[str, float] = {}
        self._base = 0.0  # progress already reported by an earlier pass (rebase)
        self._reported = 0.0

    def progress(self, fraction: float) -> None:
        """Report `fraction` of the current pass, which runs from where the last rebase left off."""
        self._reported = self._base + (1.0 - self._base) * fraction
        self._report(self._reported)

    def rebase(self) -> None:
        """Start another pass over the sub-steps (sfm.py's fall-back) in the share not yet reported,
        so progress never moves back."""
        self._base = self._reported

    def run(
        self,
        step: str,
        call: Callable[[Any], T],
        *,
        span: tuple[float, float] | None = None,
        done_fraction: Callable[[], float] = lambda: 0.0,
    ) -> T:
        """`call(token)` in a helper thread; `done_fraction()` is its progress within `span`."""
        import pycolmap

        self.check(step)
        token = pycolmap.CancellationToken()
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                if not token.is_cancelled:  # an interrupt may have come before this thread ran
                    outcome["value"] = call(token)
            except BaseException as exc:  # handed to the calling thread as is
                outcome["error"] = exc
            finally:
                done.set()

        # Waiting is done on an Event, never Thread.join: in CPython 3.11 an exception from a signal
        # handler inside join() marks a still-running thread as stopped (bpo-45274's fix assumes
        # the lock it finds held is its own), so a later join() returns at once.
        worker = threading.Thread(target=target, name=f"sfm-{step}", daemon=True)
        started, finished = time.monotonic(), False
        try:
            worker.start()  # inside the try: an interrupt may land while start() waits for the thread
            while not done.wait(POLL_S):  # a signal handler's exception interrupts this wait at once
                if span is not None:
                    self.progress(span[0] + (span[1] - span[0]) * done_fraction())
                self.check(step)
            finished = True
        finally:
            if not finished:  # leaving with an exception: stop pycolmap before it goes on
                token.cancel()
                if worker.ident is not None:  # else the thread, if any, will see the cancelled token
                    _wait_despite_interrupts(done)
            self.timings[step] = self.timings.get(step, 0.0) + time.monotonic() - started
        if "error" in outcome:
            raise outcome["error"]
        if span is not None:
            self.progress(span[1])
        return outcome["value"]

    def check(self, step: str) -> None:
        if self.should_stop():  # may itself raise the caller's interrupt
            raise JobError(f"structure from motion stopped on request (during {step})", code="sfm_stopped")
        if time.monotonic() > self.deadline:
            raise JobError(
                f"structure from motion exceeded its {self.time_limit_s:.0f} s limit (during {step})",
                code="sfm_timeout",
            )


def _wait_despite_interrupts(done: threading.Event) -> None:
    """Wait for a cancelled pycolmap call to return (0–1.2 s measured), even if another interrupt
    arrives meanwhile (a cancel after a preemption): the first exception is the one that propagates,
    and a pycolmap call left running in a daemon thread aborts the process at exit ("terminate called
    without an active exception")."""
    while True:
        try:
            done.wait()
            return
        except BaseException:  # noqa: B036 - a second interrupt; the first one is on its way out
            continue
