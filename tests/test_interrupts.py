"""Cancel and preempt signals, sent to this very process: raised at once, deferred while shielded."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from daemon.attempt.interrupts import CANCEL_SIGNAL, PREEMPT_SIGNAL, CancelWatcher, Interrupts
from daemon.errors import JobCanceled, JobError, JobInterrupted, JobPreempted


@pytest.fixture(autouse=True)
def restore_signal_handlers() -> Iterator[None]:
    """Interrupts.install() replaces SIGUSR1/SIGUSR2 handlers of the test process: put them back."""
    saved = {signum: signal.getsignal(signum) for signum in (PREEMPT_SIGNAL, CANCEL_SIGNAL)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def interrupts() -> Interrupts:
    installed = Interrupts()
    installed.install()
    return installed


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)


def let_signals_run(seconds: float = 2.0) -> None:
    """Give Python the chance to run pending signal handlers (they run between bytecodes, main thread);
    an interrupt raised by one ends this early."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


# -- raised at once -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "raised"),
    [(CANCEL_SIGNAL, JobCanceled), (PREEMPT_SIGNAL, JobPreempted)],
    ids=["cancel", "preempt"],
)
def test_signal_raises_in_the_job_at_once(interrupts, signum, raised):
    # Given a job running with interrupts installed
    # When the signal arrives while it is busy (sleeping, say)
    with pytest.raises(raised) as caught:
        send(signum)
        let_signals_run()

    # Then the matching interrupt is raised right there, and remembered
    assert caught.type is raised
    assert interrupts.requested is raised


def test_interrupt_is_not_swallowed_by_except_exception(interrupts):
    # Given handler code that catches every Exception around its work
    swallowed = []

    # When a cancel arrives inside it
    with pytest.raises(JobCanceled):
        try:
            send(CANCEL_SIGNAL)
            let_signals_run()
        except Exception as exc:  # what careless handler code does
            swallowed.append(exc)

    # Then the interrupt went through: it is a BaseException
    assert swallowed == []
    assert issubclass(JobCanceled, JobInterrupted) and not issubclass(JobInterrupted, Exception)


# -- deferred while shielded -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "raised"),
    [(CANCEL_SIGNAL, JobCanceled), (PREEMPT_SIGNAL, JobPreempted)],
    ids=["cancel", "preempt"],
)
def test_shielded_block_defers_the_interrupt_to_raise_if_requested(interrupts, signum, raised):
    # Given final state being written inside a shielded block
    finished_block = False
    with interrupts.shielded():
        # When the signal arrives
        send(signum)
        let_signals_run(0.2)
        interrupts.raise_if_requested()  # still shielded: must not raise
        finished_block = True

    # Then the block ran to its end, the request was remembered, and it is raised at the next check
    assert finished_block
    assert interrupts.requested is raised
    with pytest.raises(raised):
        interrupts.raise_if_requested()


def test_nested_shields_defer_until_the_outermost_ends(interrupts):
    # Given nested shielded blocks
    with interrupts.shielded():
        with interrupts.shielded():
            send(CANCEL_SIGNAL)
            let_signals_run(0.1)
        # When the inner block ends
        # Then the outer one still defers
        interrupts.raise_if_requested()

    with pytest.raises(JobCanceled):
        interrupts.raise_if_requested()


def test_nothing_requested_means_no_raise(interrupts):
    # Given no signal
    # When the job checks / Then it goes on
    interrupts.raise_if_requested()
    assert interrupts.requested is None


@pytest.mark.parametrize(
    "order",
    [(PREEMPT_SIGNAL, CANCEL_SIGNAL), (CANCEL_SIGNAL, PREEMPT_SIGNAL)],
    ids=["preempt-first", "cancel-first"],
)
def test_cancel_outranks_preemption(interrupts, order):
    # Given both a preemption and a cancel arriving while shielded, in either order
    with interrupts.shielded():
        for signum in order:
            send(signum)
            let_signals_run(0.1)

    # When the job next checks
    # Then it is canceled (a canceled job must not be requeued)
    assert interrupts.requested is JobCanceled
    with pytest.raises(JobCanceled):
        interrupts.raise_if_requested()


# -- the cancel watcher --------------------------------------------------------------------------------


@pytest.fixture
def received() -> list[int]:
    """CANCEL_SIGNAL deliveries to this process, recorded instead of raised."""
    got: list[int] = []
    signal.signal(CANCEL_SIGNAL, lambda signum, frame: got.append(signum))
    return got


def test_watcher_signals_the_process_when_cancel_is_requested(received):
    # Given a watcher polling a flag that turns on after a few polls
    polls = []

    def requested() -> bool:
        polls.append(time.monotonic())
        return len(polls) >= 3

    watcher = CancelWatcher(requested, interval_s=0.01).start()

    # When the flag turns on
    # Then the process gets the cancel signal, once, and the watcher stops polling
    assert wait_for(lambda: received), "no cancel signal"
    assert watcher.join(timeout_s=30), "the watcher went on polling after its signal"
    assert received == [CANCEL_SIGNAL]
    assert len(polls) == 3


def test_watcher_survives_a_predicate_that_raises(received):
    # Given a flag that cannot be read for a while (Redis away), then reads as requested
    answers = iter([ConnectionError("redis down"), ConnectionError("redis down"), False, True])

    def requested() -> bool:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    watcher = CancelWatcher(requested, interval_s=0.01).start()

    # When the flag is finally read as requested
    # Then the cancel still reaches the process
    assert wait_for(lambda: received), "watcher died on the predicate's error"
    watcher.stop()


def test_stopped_watcher_never_signals(received):
    # Given a watcher stopped while no cancel was requested
    flag = threading.Event()
    polls = []

    def requested() -> bool:
        polls.append(1)
        return flag.is_set()

    watcher = CancelWatcher(requested, interval_s=0.01).start()
    assert wait_for(lambda: len(polls) >= 2), "the watcher never polled"
    watcher.stop()
    assert watcher.join(timeout_s=30), "stop() did not end the polling thread"

    # When the flag turns on afterwards (the job already ended)
    flag.set()

    # Then no signal was or can be sent: nothing polls any more
    assert received == []


def test_watcher_and_interrupts_cancel_a_running_job(interrupts):
    # Given a job with interrupts installed and a watcher on its cancel flag
    flag = threading.Event()
    watcher = CancelWatcher(flag.is_set, interval_s=0.01).start()

    # When someone requests the cancel while the job is busy
    with pytest.raises(JobCanceled):
        flag.set()
        let_signals_run()

    # Then the job was interrupted as canceled
    assert interrupts.requested is JobCanceled
    watcher.stop()


# -- an interrupt that surfaces wrapped -------------------------------------------------------------------


def _wrapped(interrupt: BaseException) -> RuntimeError:
    """What a preempt signal landing in `import pycolmap` became (measured): the handler's exception,
    then ImportError("initialization failed") from it, then pycolmap's RuntimeError from that."""
    try:
        try:
            try:
                raise interrupt
            except BaseException as exc:
                raise ImportError("initialization failed") from exc
        except ImportError as exc:
            raise RuntimeError("Cannot import the C++ backend pycolmap._core.") from exc
    except RuntimeError as exc:
        return exc


def test_an_interrupt_wrapped_by_the_code_it_landed_in_is_still_that_interrupt():
    interrupts = Interrupts()
    preempted = JobPreempted("preempted")
    assert interrupts.behind(_wrapped(preempted)) is preempted
    assert interrupts.behind(RuntimeError("a real bug")) is None
    assert interrupts.behind(JobError("bad photo", code="corrupt_image")) is None


def test_any_unexpected_error_while_an_interrupt_is_pending_is_that_interrupt(interrupts):
    # Given a preemption requested inside a shielded block (remembered, not raised yet)
    with interrupts.shielded():
        os.kill(os.getpid(), PREEMPT_SIGNAL)
        assert wait_for(lambda: interrupts.requested is not None)
    # Then an unexpected error now is taken for the preemption (the real cause), a job's own error not
    assert isinstance(interrupts.behind(OSError("stream closed")), JobPreempted)
    assert interrupts.behind(JobError("bad photo", code="corrupt_image")) is None
