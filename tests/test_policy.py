"""The end-of-attempt policy (daemon/attempt/policy.py), row by row of the README's "Delivery
guarantee" table: what each way an attempt can end does (retry, requeue at the front, fail, cancel),
which budget it uses, and what the ledger, the row and the callback are told."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import redis as redis_lib
from redis import Redis

from daemon.adapters.ledger import Ledger
from daemon.attempt.policy import (
    MAX_RETRY_DELAY_S,
    Action,
    Budget,
    Budgets,
    Ending,
    How,
    charged,
    decide,
    retry_delay,
    settle,
    unexpected_error,
)
from daemon.config import load_settings
from daemon.errors import DownloadError, InputError, JobError

BUDGETS = Budgets(max_attempts=3, max_preemptions=2, backoff_s=30)
"""JOB_MAX_ATTEMPTS=3, JOB_MAX_PREEMPTIONS=2, JOB_RETRY_BACKOFF_S=30."""

NETWORK = DownloadError("input 0: HTTP 503", code="download_http_error")
OOM = "work-horse killed by SIGKILL (likely the out-of-memory killer)"
NOTICE = "spot interruption notice (terminate at 2026-01-01T00:00:00Z)"
VANISHED = "its worker stopped heartbeating"
CANCELED = JobError("canceled on request", code="canceled")
BAD_INPUT = InputError("input 0 is not a readable image")

# Each row: (README row, the ending, failures so far, preemptions so far (this ending counted),
#            expected action, status, error code, budget charged, delay in seconds)
TABLE = [
    ("retryable failure, attempts left", Ending.failed(NETWORK), 1, 0,
     Action.RETRY, "requeued", "download_http_error", Budget.FAILURES, 30),
    ("retryable failure, the second retry waits twice as long", Ending.failed(NETWORK), 2, 0,
     Action.RETRY, "requeued", "download_http_error", Budget.FAILURES, 60),
    ("retryable failure, the last attempt", Ending.failed(NETWORK), 3, 0,
     Action.FAIL, "failed", "download_http_error", Budget.FAILURES, 0),
    ("job process killed (OOM, segfault), attempts left", Ending.horse_killed(OOM), 1, 0,
     Action.RETRY, "requeued", "worker_lost", Budget.FAILURES, 30),
    ("job process killed, no attempts left", Ending.horse_killed(OOM), 3, 0,
     Action.FAIL, "failed", "worker_lost", Budget.FAILURES, 0),
    ("whole worker lost (abandoned): a preemption, at the front", Ending.worker_lost(VANISHED), 0, 1,
     Action.REQUEUE_FRONT, "requeued", "worker_lost", Budget.PREEMPTIONS, 0),
    ("SIGTERM or spot notice: at the front", Ending.preempted(NOTICE), 0, 1,
     Action.REQUEUE_FRONT, "requeued", "preempted", Budget.PREEMPTIONS, 0),
    ("preempted at JOB_MAX_PREEMPTIONS: still requeued", Ending.preempted(NOTICE), 0, 2,
     Action.REQUEUE_FRONT, "requeued", "preempted", Budget.PREEMPTIONS, 0),
    ("preempted with JOB_MAX_ATTEMPTS spent: preemptions don't use it", Ending.preempted(NOTICE), 3, 1,
     Action.REQUEUE_FRONT, "requeued", "preempted", Budget.PREEMPTIONS, 0),
    ("preempted over JOB_MAX_PREEMPTIONS", Ending.preempted(NOTICE), 0, 3,
     Action.FAIL, "failed", "too_many_preemptions", Budget.PREEMPTIONS, 0),
    ("worker lost over JOB_MAX_PREEMPTIONS", Ending.worker_lost(VANISHED), 0, 3,
     Action.FAIL, "failed", "too_many_preemptions", Budget.PREEMPTIONS, 0),
    ("non-retryable error (bad spec or input): failed at once", Ending.failed(BAD_INPUT), 0, 0,
     Action.FAIL, "failed", "invalid_input", None, 0),
    ("python -m daemon cancel", Ending(How.CANCELED, CANCELED), 0, 0,
     Action.CANCEL, "canceled", "canceled", None, 0),
]  # fmt: skip
# The table's "Spot rebalance recommendation" row is not an end of an attempt (the job checkpoints and
# goes on), so the policy has no such ending: see test_rebalance_is_not_an_ending below, and
# tests/test_spot.py and tests/test_recovery_e2e.py (test_rebalance_recommendation_…) for what it does.


@pytest.mark.parametrize(
    ("ending", "failures", "preemptions", "action", "status", "code", "budget", "delay"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_each_row_of_the_delivery_guarantee(
    ending, failures, preemptions, action, status, code, budget, delay
):
    # Given an attempt that ended this way, with these failures and preemptions counted so far
    # When the policy decides
    decision = decide(ending, failures=failures, preemptions=preemptions, budgets=BUDGETS)
    # Then it acts as the README says, charging the budget it names, and reports the right status and code
    assert (decision.action, decision.status, decision.error.code) == (action, status, code)
    assert decision.charged is budget and charged(ending.how) is budget
    assert decision.delay_s == delay
    assert decision.at_front is (action is Action.REQUEUE_FRONT)


@pytest.mark.parametrize(
    ("ending", "message"),
    [
        (Ending.preempted(NOTICE), f"{NOTICE}; the job was requeued"),
        (Ending.worker_lost(VANISHED), f"{VANISHED}; the job was requeued"),
        (Ending.horse_killed(OOM), OOM),
        (Ending.failed(NETWORK), NETWORK.message),
    ],
)
def test_a_requeue_reports_its_cause(ending, message):
    # Given an attempt that is requeued (one preemption, one failure so far)
    # When the policy decides
    decision = decide(ending, failures=1, preemptions=1, budgets=BUDGETS)
    # Then the row and the callback say why, and that the job goes on
    assert decision.status == "requeued" and decision.error.message == message


def test_too_many_preemptions_says_the_cause_and_the_cap():
    # Given a job preempted a third time with JOB_MAX_PREEMPTIONS=2
    # When the policy decides
    decision = decide(Ending.preempted(NOTICE), failures=0, preemptions=3, budgets=BUDGETS)
    # Then the failure names the last cause, the count and the setting
    assert decision.error.message == f"{NOTICE}; preempted 3 times (JOB_MAX_PREEMPTIONS=2)"
    assert decision.spent == 3


def test_rebalance_is_not_an_ending():
    # Given the ways an attempt can end / Then a rebalance recommendation is not one of them (nor is a
    # superseded attempt, which leaves without a trace and without a decision)
    assert {h.name for h in How} == {
        "RETRYABLE_FAILURE", "FINAL_FAILURE", "HORSE_KILLED", "PREEMPTED", "WORKER_LOST", "CANCELED",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("backoff_s", "delays"),
    [
        (30, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]),
        (1, [1, 2, 4, 8, 16]),
        (5000, [3600, 3600]),
    ],
)
def test_backoff_doubles_per_failure_and_is_capped_at_an_hour(backoff_s, delays):
    # Given JOB_RETRY_BACKOFF_S / When the n-th failure is retried / Then the wait doubles up to the cap
    assert [retry_delay(backoff_s, n) for n in range(1, len(delays) + 1)] == delays
    assert max(delays) <= MAX_RETRY_DELAY_S


def test_budgets_come_from_the_settings(tmp_path: Path):
    # Given the three settings in the environment
    env = {
        "DAEMON_ENV_FILE": str(tmp_path / "absent.env"),
        "JOB_MAX_ATTEMPTS": "5",
        "JOB_MAX_PREEMPTIONS": "7",
        "JOB_RETRY_BACKOFF_S": "11",
    }
    # When the budgets are built / Then they carry them
    assert Budgets.of(load_settings(env)) == Budgets(max_attempts=5, max_preemptions=7, backoff_s=11)


@pytest.mark.parametrize(
    ("ending", "status", "failures", "preemptions"),
    [
        (Ending.failed(NETWORK), "requeued", 1, 0),
        (Ending.horse_killed(OOM), "requeued", 1, 0),
        (Ending.preempted(NOTICE), "requeued", 0, 1),
        (Ending.worker_lost(VANISHED), "requeued", 0, 1),
        (Ending.failed(BAD_INPUT), "failed", 0, 0),
        (Ending(How.CANCELED, CANCELED), "canceled", 0, 0),
    ],
    ids=lambda v: v.how.value if isinstance(v, Ending) else None,
)
def test_settle_counts_the_ending_and_the_ledger_shows_the_decision(
    redis: Redis, ending, status, failures, preemptions
):
    # Given a running attempt in the ledger (real Redis)
    ledger = Ledger(redis)
    attempt = ledger.begin_attempt("job-1", rq_id="rq-1", worker="w")
    # When it ends this way
    decision = settle(ledger, "job-1", attempt, ending, BUDGETS)
    # Then the ending was counted against its budget only, and the ledger's status is the decision's
    entry = ledger.get("job-1")
    assert (entry.failures, entry.preemptions) == (failures, preemptions)
    assert entry.status == decision.status == status


def test_settle_fails_the_job_in_the_ledger_once_the_budget_is_spent(redis: Redis):
    # Given a job that failed twice already (JOB_MAX_ATTEMPTS=3)
    ledger = Ledger(redis)
    for _ in range(2):
        attempt = ledger.begin_attempt("job-2", rq_id="rq-2", worker="w")
        assert settle(ledger, "job-2", attempt, Ending.failed(NETWORK), BUDGETS).action is Action.RETRY
    # When its third attempt fails
    attempt = ledger.begin_attempt("job-2", rq_id="rq-2", worker="w")
    decision = settle(ledger, "job-2", attempt, Ending.horse_killed(OOM), BUDGETS)
    # Then it fails for good, and the ledger says so
    assert decision.action is Action.FAIL and ledger.get("job-2").status == "failed"


@pytest.mark.parametrize(
    "second", [Ending.horse_killed(OOM), Ending.worker_lost(VANISHED)], ids=["killed", "lost"]
)
def test_an_attempt_is_settled_once_whoever_settles_it_again(redis: Redis, second: Ending):
    # Given an attempt its horse ended itself: preempted, requeued at the front
    ledger = Ledger(redis)
    attempt = ledger.begin_attempt("job-3", rq_id="rq-3", worker="w")
    first = settle(ledger, "job-3", attempt, Ending.preempted(NOTICE), BUDGETS)
    # When the parent settles the same attempt again (the horse was killed before it exited)
    again = settle(ledger, "job-3", attempt, second, BUDGETS)
    # Then nothing is counted twice, and the first decision is what comes back
    entry = ledger.get("job-3")
    assert (entry.failures, entry.preemptions) == (0, 1)
    assert first.first and not again.first
    assert (again.action, again.status, again.delay_s) == (first.action, first.status, first.delay_s)
    # And the next attempt is counted as usual
    attempt = ledger.begin_attempt("job-3", rq_id="rq-3", worker="w")
    assert settle(ledger, "job-3", attempt, Ending.preempted(NOTICE), BUDGETS).first
    assert ledger.get("job-3").preemptions == 2


@pytest.mark.parametrize(
    ("ending", "failures", "preemptions", "discards"),
    [
        pytest.param(Ending.failed(NETWORK), 1, 0, False, id="requeued: kept to resume from"),
        pytest.param(Ending.failed(NETWORK), 3, 0, False, id="out of attempts: kept for a retry by hand"),
        pytest.param(Ending.horse_killed(OOM), 3, 0, False, id="horse killed, out of attempts: kept"),
        pytest.param(Ending.preempted(NOTICE), 0, 3, False, id="too many preemptions: kept"),
        pytest.param(Ending.failed(BAD_INPUT), 0, 0, True, id="refused input: nothing to resume"),
        pytest.param(Ending(How.CANCELED, CANCELED), 0, 0, True, id="canceled: nothing to resume"),
    ],
)
def test_checkpoints_go_only_when_no_retry_could_use_them(ending, failures, preemptions, discards):
    # Given an attempt that ended this way, When the policy decides
    decision = decide(ending, failures=failures, preemptions=preemptions, budgets=BUDGETS)
    # Then the job's checkpoints are discarded only if nothing a retry could fix is left
    assert decision.discards_checkpoints is discards


@pytest.mark.parametrize(
    ("exc", "code", "retryable"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "disk_full", True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk_full", True),
        (redis_lib.ConnectionError("Error 111 connecting to 127.0.0.1:6379"), "redis_unavailable", True),
        (redis_lib.TimeoutError("Timeout reading from socket"), "redis_unavailable", True),
        (OSError(errno.EACCES, "Permission denied"), "internal_error", False),
        (KeyError("frames"), "internal_error", False),
    ],
    ids=["enospc", "edquot", "redis-down", "redis-timeout", "eacces", "bug"],
)
def test_an_unexpected_exception_is_retryable_only_when_the_machine_or_a_service_failed(exc, code, retryable):
    error = unexpected_error(exc)
    assert (error.code, error.retryable) == (code, retryable)
    assert str(exc) in error.message
    # and a retryable one is retried, not failed for good (so its checkpoints stay)
    decision = decide(Ending.failed(error), failures=1, preemptions=0, budgets=BUDGETS)
    assert decision.action is (Action.RETRY if retryable else Action.FAIL)
    assert decision.discards_checkpoints is (not retryable)
