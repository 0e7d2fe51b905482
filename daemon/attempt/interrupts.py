"""Stopping a running job from outside: cancel (the customer) and preempt (the daemon is stopping).

Both arrive as signals to the work-horse: SIGUSR2 = cancel (sent by the horse's own cancel watcher when
`python -m daemon cancel` sets the flag in Redis), SIGUSR1 = preempt (sent by the worker parent on
SIGTERM or a spot notice). The handler raises `JobCanceled` / `JobPreempted` in the job's main thread
right away (so a blocking download or sleep stops within a moment), except inside `shielded()` blocks,
where the runner writes final state; there the request is remembered, and raised by the next
`raise_if_requested()` (every stage boundary and progress report calls it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from ..errors import JobCanceled, JobError, JobInterrupted, JobPreempted

log = logging.getLogger(__name__)

PREEMPT_SIGNAL = signal.SIGUSR1
CANCEL_SIGNAL = signal.SIGUSR2

CHECKPOINT_SIGNAL = signal.SIGRTMIN + 1
"""Asks the job to write a checkpoint soon and go on (a rebalance recommendation): never interrupts."""

_SIGNALS: dict[int, type[JobInterrupted]] = {PREEMPT_SIGNAL: JobPreempted, CANCEL_SIGNAL: JobCanceled}


class Interrupts:
    """Per-process interrupt state of the job being run (one job per work-horse)."""

    def __init__(self) -> None:
        self.requested: type[JobInterrupted] | None = None
        self.checkpoint_requested = False
        self._shield = 0

    def install(self) -> None:
        for signum in _SIGNALS:
            signal.signal(signum, self._on_signal)
        signal.signal(CHECKPOINT_SIGNAL, self._on_checkpoint_signal)

    def _on_checkpoint_signal(self, signum: int, frame: FrameType | None) -> None:
        self.checkpoint_requested = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        kind = _SIGNALS[signum]
        # A cancel outranks a preemption: a canceled job must not be requeued.
        if self.requested is None or kind is JobCanceled:
            self.requested = kind
        log.warning("%s requested", kind.reason)
        if self._shield == 0:
            raise self.requested(self.requested.reason)

    def behind(self, error: BaseException) -> JobInterrupted | None:
        """The interrupt an error really is, or None. The handler's exception can surface wrapped by
        whatever code it landed in: measured, a preempt signal during `import pycolmap` became
        "ImportError: initialization failed" and then pycolmap's RuntimeError, which failed the job for
        good on a spot notice. An error with an interrupt in its chain, or any error other than a
        JobError while an interrupt is pending, is that interrupt."""
        seen: set[int] = set()
        link: BaseException | None = error
        while link is not None and id(link) not in seen:
            if isinstance(link, JobInterrupted):
                return link
            seen.add(id(link))
            link = link.__cause__ or link.__context__
        if self.requested is not None and not isinstance(error, JobError):
            return self.requested(self.requested.reason)
        return None

    def raise_if_requested(self) -> None:
        if self.requested is not None and self._shield == 0:
            raise self.requested(self.requested.reason)

    def raise_requested(self) -> None:
        """Raise a pending request even inside `shielded()`: for loops that defer interrupts to a
        safe point of their own (a training step boundary) and have saved what they must."""
        if self.requested is not None:
            raise self.requested(self.requested.reason)

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Defer interrupts while final state is being written."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1


class CancelWatcher:
    """Polls the cancel flag from a thread and signals the job's process when it appears. Polling
    (once a second) rather than pub/sub keeps it working across Redis restarts with no resubscribe."""

    def __init__(self, is_requested: Callable[[], bool], *, interval_s: float = 1.0) -> None:
        self.is_requested = is_requested
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cancel-watcher", daemon=True)

    def start(self) -> CancelWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the polling thread to end (after its signal, or after stop()); True if it has."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                requested = self.is_requested()
            except Exception as exc:  # Redis away: the job goes on; a cancel waits for Redis
                log.debug("cancel flag unreadable: %s", exc)
                continue
            if requested:
                os.kill(os.getpid(), CANCEL_SIGNAL)
                return
