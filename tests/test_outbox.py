"""The Redis outbox against a real Redis: leases, latest-wins rows, backoff, giving up."""

from __future__ import annotations

import json
import time

import pytest
from redis import Redis

from daemon.adapters.outbox import DUE_KEY, ITEM_PREFIX, LEASE_S, Delivery, Outbox, OutboxItem, outbox_key


@pytest.fixture
def outbox(redis: Redis) -> Outbox:
    return Outbox(redis, max_age_s=3600)


def callback_data(n: int = 1) -> dict:
    return {"url": f"https://hooks.example.com/{n}", "body": "{}", "type": "job.completed", "job_id": f"j{n}"}


class Recorder:
    """A sink answering a fixed Delivery and remembering what it was given."""

    def __init__(self, answer: Delivery) -> None:
        self.answer = answer
        self.items: list[OutboxItem] = []

    def __call__(self, item: OutboxItem) -> Delivery:
        self.items.append(item)
        return self.answer


def never(tries: int) -> float:
    raise AssertionError("no retry expected")


# -- put / claim / finish --------------------------------------------------------------------------------


def test_put_claim_finish(outbox):
    # Given a callback put in the outbox
    outbox.put_callback(callback_data(), webhook_id="msg_1")
    assert outbox.pending() == 1

    # When it is claimed
    (item,) = outbox.claim_due()

    # Then it comes back whole, untried
    assert item.item_id == "callback:msg_1" and item.kind == "callback"
    assert item.data == callback_data() and item.tries == 0

    # And once finished it is gone
    assert outbox.finish(item) is True
    assert outbox.pending() == 0 and outbox.claim_due() == []


def test_claimed_item_is_leased_then_due_again(outbox):
    # Given an item claimed now
    outbox.put_callback(callback_data(), webhook_id="msg_1")
    now = time.time()
    (first,) = outbox.claim_due(now=now)

    # When another deliverer looks within the lease, then after it (its deliverer died)
    during = outbox.claim_due(now=now + LEASE_S - 1)
    after = outbox.claim_due(now=now + LEASE_S + 1)

    # Then it is not handed out twice within the lease, but is handed out again after it
    assert during == []
    assert [i.item_id for i in after] == [first.item_id]


def test_finish_keeps_an_item_replaced_meanwhile(outbox):
    # Given a row claimed for delivery, then replaced by a newer write for the same job
    outbox.put_row({"id": "job-1", "attempt": 1, "progress": 10})
    (delivered,) = outbox.claim_due()
    outbox.put_row({"id": "job-1", "attempt": 1, "progress": 20})

    # When the first delivery finishes
    finished = outbox.finish(delivered)

    # Then the newer version is not deleted, and it is due right away
    assert finished is False
    (newer,) = outbox.claim_due()
    assert newer.data["progress"] == 20
    assert outbox.finish(newer) is True and outbox.pending() == 0


# -- rows: merge and fencing --------------------------------------------------------------------------


def test_released_items_come_back_in_the_order_they_were_claimed(outbox):
    # Given callbacks queued in an order their ids do not sort in, claimed for a lane that was busy
    for n, webhook_id in enumerate(["msg_c", "msg_a", "msg_b"]):
        outbox.put_callback(callback_data(n), webhook_id=webhook_id)
        time.sleep(0.002)  # (distinct due times, as separate events have)
    claimed = outbox.claim_due()
    assert [i.item_id for i in claimed] == ["callback:msg_c", "callback:msg_a", "callback:msg_b"]

    # When they are given back for the next round
    outbox.release(claimed, after_s=0)

    # Then they come back due, untried, in the same order
    again = outbox.claim_due(now=time.time() + 1)
    assert [i.item_id for i in again] == [i.item_id for i in claimed]
    assert all(i.tries == 0 for i in again)


def test_put_row_merges_fields_of_the_same_attempt(outbox):
    # Given a row waiting in the outbox
    outbox.put_row({"id": "job-1", "attempt": 1, "status": "running", "stage": "fetch", "progress": 10})

    # When a later write of the same attempt changes some fields
    outbox.put_row({"id": "job-1", "attempt": 1, "status": "completed", "progress": 100})

    # Then one item holds the union, the latest value of each field winning
    assert outbox.pending() == 1
    (item,) = outbox.claim_due()
    assert item.data == {
        "id": "job-1",
        "attempt": 1,
        "status": "completed",
        "stage": "fetch",
        "progress": 100,
    }


def test_put_row_keeps_a_newer_attempt_over_a_stale_one(outbox):
    # Given attempt 2's row waiting in the outbox
    outbox.put_row({"id": "job-1", "attempt": 2, "status": "running", "progress": 5})

    # When a late row of attempt 1 arrives (a slow instance, a replayed final row)
    outbox.put_row({"id": "job-1", "attempt": 1, "status": "failed", "progress": 70, "error_code": "x"})

    # Then attempt 2's row is kept untouched
    (item,) = outbox.claim_due()
    assert item.data == {"id": "job-1", "attempt": 2, "status": "running", "progress": 5}


def test_put_row_of_a_newer_attempt_replaces_the_older(outbox):
    # Given attempt 1's final row waiting
    outbox.put_row({"id": "job-1", "attempt": 1, "status": "requeued", "progress": 40})

    # When attempt 2 writes
    outbox.put_row({"id": "job-1", "attempt": 2, "status": "running", "progress": 3})

    # Then attempt 2's values win
    (item,) = outbox.claim_due()
    assert item.data["attempt"] == 2 and item.data["status"] == "running" and item.data["progress"] == 3


def test_rows_of_different_jobs_are_separate_items(outbox):
    # Given rows of two jobs
    outbox.put_row({"id": "job-1", "attempt": 1, "status": "completed"})
    outbox.put_row({"id": "job-2", "attempt": 1, "status": "failed"})

    # Then both wait, each under its own job id
    assert sorted(i.item_id for i in outbox.claim_due()) == ["row:job-1", "row:job-2"]


# -- retry_later ----------------------------------------------------------------------------------------


def test_retry_later_delays_and_counts_the_try(outbox):
    # Given a claimed item
    outbox.put_callback(callback_data(), webhook_id="msg_1")
    (item,) = outbox.claim_due()

    # When its delivery is put off for 30 s
    outbox.retry_later(item, 30)

    # Then it is not due now, is due after 30 s, and carries one try
    assert outbox.claim_due(now=time.time()) == []
    (again,) = outbox.claim_due(now=time.time() + 31)
    assert again.item_id == item.item_id and again.tries == 1 and again.data == item.data


def test_retry_later_leaves_a_replaced_item_due_now(outbox):
    # Given a claimed row that was replaced by a newer write
    outbox.put_row({"id": "job-1", "attempt": 1, "progress": 10})
    (old,) = outbox.claim_due()
    outbox.put_row({"id": "job-1", "attempt": 1, "progress": 30})

    # When the old version's delivery is put off
    outbox.retry_later(old, 30)

    # Then the newer version is not delayed nor marked as tried
    (newer,) = outbox.claim_due()
    assert newer.data["progress"] == 30 and newer.tries == 0


# -- drain_once -----------------------------------------------------------------------------------------


def test_drain_delivered_item_is_removed(outbox):
    # Given a row and a callback waiting
    outbox.put_row({"id": "job-1", "attempt": 1, "status": "completed"})
    outbox.put_callback(callback_data(), webhook_id="msg_1")
    rows, callbacks = Recorder(Delivery(ok=True)), Recorder(Delivery(ok=True))

    # When the outbox is drained with sinks that succeed
    landed = outbox.drain_once({"row": rows, "callback": callbacks}, delay=never)

    # Then each went to its own sink and both are gone
    assert landed == 2
    assert [i.item_id for i in rows.items] == ["row:job-1"]
    assert [i.item_id for i in callbacks.items] == ["callback:msg_1"]
    assert outbox.pending() == 0


def test_drain_retryable_failure_is_retried_with_backoff(outbox):
    # Given a callback whose receiver is down
    outbox.put_callback(callback_data(), webhook_id="msg_1")
    sink = Recorder(Delivery(ok=False, retryable=True, error="503"))
    asked: list[int] = []

    def delay(tries: int) -> float:
        asked.append(tries)
        return 0.0

    # When the outbox is drained twice
    first = outbox.drain_once({"callback": sink}, delay=delay)
    second = outbox.drain_once({"callback": sink}, delay=delay)

    # Then nothing landed, it is still pending, and the backoff was asked for try 0 then try 1
    assert (first, second) == (0, 0)
    assert outbox.pending() == 1
    assert asked == [0, 1]
    assert [i.tries for i in sink.items] == [0, 1]


def test_drain_retryable_failure_waits_for_its_delay(outbox):
    # Given a callback whose receiver is down, and a 30 s backoff
    outbox.put_callback(callback_data(), webhook_id="msg_1")
    sink = Recorder(Delivery(ok=False, retryable=True, error="503"))

    # When the outbox is drained twice in a row
    outbox.drain_once({"callback": sink}, delay=lambda tries: 30.0)
    outbox.drain_once({"callback": sink}, delay=lambda tries: 30.0)

    # Then it was tried once only, and is due again after the delay
    assert len(sink.items) == 1
    (later,) = outbox.claim_due(now=time.time() + 31)
    assert later.tries == 1


def test_drain_non_retryable_failure_gives_up(outbox):
    # Given a row the store refuses for good (a constraint)
    outbox.put_row({"id": "job-1", "attempt": 1, "progress": 101})
    sink = Recorder(Delivery(ok=False, retryable=False, error="check violation"))

    # When the outbox is drained
    landed = outbox.drain_once({"row": sink}, delay=never)

    # Then it was tried once and dropped
    assert landed == 0 and len(sink.items) == 1
    assert outbox.pending() == 0


def test_drain_gives_up_on_an_item_older_than_max_age(redis):
    # Given an outbox whose items expire at once, holding a callback whose receiver is down
    outbox = Outbox(redis, max_age_s=0.0)
    outbox.put_callback(callback_data(), webhook_id="msg_1")
    time.sleep(0.01)
    sink = Recorder(Delivery(ok=False, retryable=True, error="503"))

    # When the outbox is drained
    landed = outbox.drain_once({"callback": sink}, delay=never)

    # Then the retryable failure is not retried: the item is too old and is dropped
    assert landed == 0 and len(sink.items) == 1
    assert outbox.pending() == 0


def test_drain_leaves_an_item_without_a_sink_for_a_worker_that_has_one(outbox):
    # Given a callback, drained by a worker that cannot send callbacks (no CALLBACK_SECRET)
    outbox.put_callback(callback_data(), webhook_id="msg_1")

    # When the outbox is drained with a row sink only
    landed = outbox.drain_once({"row": Recorder(Delivery(ok=True))}, delay=never)

    # Then the callback is neither sent nor dropped: it waits, untouched, for a worker with a sender
    assert landed == 0 and outbox.pending() == 1
    (item,) = outbox.claim_due(now=time.time() + LEASE_S + 1)
    assert item.item_id == "callback:msg_1" and item.tries == 0
    sink = Recorder(Delivery(ok=True))
    assert outbox.drain_once({"callback": sink}, now=time.time() + 2 * LEASE_S + 2, delay=never) == 1


def test_drain_mixed_batch(outbox):
    # Given three callbacks: one that lands, one refused for good, one whose receiver is down
    for n in (1, 2, 3):
        outbox.put_callback(callback_data(n), webhook_id=f"msg_{n}")
    answers = {
        "callback:msg_1": Delivery(ok=True),
        "callback:msg_2": Delivery(ok=False, retryable=False, error="410"),
        "callback:msg_3": Delivery(ok=False, retryable=True, error="503"),
    }

    # When the outbox is drained once
    landed = outbox.drain_once({"callback": lambda item: answers[item.item_id]}, delay=lambda t: 60.0)

    # Then one landed, one was dropped, and only the retryable one waits
    assert landed == 1
    assert outbox.pending() == 1
    (left,) = outbox.claim_due(now=time.time() + 61)
    assert left.item_id == "callback:msg_3"


def test_drain_survives_a_sink_that_raises(outbox):
    # Given two callbacks, the first of which makes its sink raise (a malformed item, a disk error)
    outbox.put_callback(callback_data(1), webhook_id="msg_1")
    outbox.put_callback(callback_data(2), webhook_id="msg_2")

    def sink(item: OutboxItem) -> Delivery:
        if item.item_id == "callback:msg_1":
            raise KeyError("url")
        return Delivery(ok=True)

    # When the outbox is drained
    landed = outbox.drain_once({"callback": sink}, delay=lambda t: 30.0)

    # Then the healthy item still landed and the raising one is retried later like a failed delivery
    assert landed == 1
    (left,) = outbox.claim_due(now=time.time() + 31)
    assert left.item_id == "callback:msg_1" and left.tries == 1


# -- items are authenticated and checked, not trusted as read ---------------------------------------------

KEY = outbox_key("whsec_the-daemons-callback-secret")


def forge(redis: Redis, item_id: str, kind: str, data: dict, **extra) -> None:
    """An item written straight to Redis, as anyone with Redis access could."""
    env = {"kind": kind, "data": data, "created": time.time(), "tries": 0, "v": "x", **extra}
    redis.set(ITEM_PREFIX + item_id, json.dumps(env))
    redis.zadd(DUE_KEY, {item_id: time.time()})


def test_a_forged_callback_is_dropped_never_signed_or_sent(redis, caplog):
    # Given the daemon's outbox (keyed), holding one genuine callback and a forged one pointing elsewhere
    outbox = Outbox(redis, max_age_s=3600, key=KEY)
    outbox.put_callback(callback_data(1), webhook_id="msg_real")
    forge(redis, "callback:msg_forged", "callback", {**callback_data(2), "url": "https://attacker.example/"})
    # And a genuine item whose destination was then rewritten in Redis
    outbox.put_callback(callback_data(3), webhook_id="msg_rewritten")
    raw = json.loads(redis.get(ITEM_PREFIX + "callback:msg_rewritten"))
    raw["data"]["url"] = "https://attacker.example/"
    redis.set(ITEM_PREFIX + "callback:msg_rewritten", json.dumps(raw))
    sink = Recorder(Delivery(ok=True))
    # When the drainer runs
    with caplog.at_level("ERROR", logger="daemon.adapters.outbox"):
        landed = outbox.drain_once({"callback": sink}, delay=never)
    # Then only the genuine callback went out; the others were dropped and said so
    assert landed == 1 and [item.item_id for item in sink.items] == ["callback:msg_real"]
    assert outbox.pending() == 0 and not redis.exists(ITEM_PREFIX + "callback:msg_forged")
    dropped = [r.getMessage() for r in caplog.records if "dropping item" in r.getMessage()]
    assert len(dropped) == 2 and all("no valid HMAC" in line for line in dropped)


def test_an_item_signed_with_another_key_is_dropped(redis):
    Outbox(redis, max_age_s=3600, key=outbox_key("another-secret")).put_row(
        {"id": "job-1", "attempt": 1, "status": "completed"}
    )
    sink = Recorder(Delivery(ok=True))
    assert Outbox(redis, max_age_s=3600, key=KEY).drain_once({"row": sink}, delay=never) == 0
    assert sink.items == []


@pytest.mark.parametrize(
    ("item_id", "kind", "data", "why"),
    [
        ("row:../../etc/passwd", "row", {"id": "../../etc/passwd", "status": "failed"}, "valid job id"),
        ("row:job-1", "row", {"id": "job-2", "status": "failed"}, "valid job id"),
        (
            "callback:m",
            "callback",
            {"url": "https://h.example/", "body": "{}", "type": "x", "job_id": "j"},
            "event type",
        ),
        ("callback:m", "callback", {"type": "job.failed", "job_id": "j"}, "url and body"),
        ("row:job-1", "callback", callback_data(), "does not match kind"),
        ("shell:job-1", "shell", {"cmd": "rm -rf /"}, "not an outbox envelope"),
    ],
    ids=["row-path", "row-other-id", "callback-type", "callback-fields", "kind-mismatch", "unknown-kind"],
)
def test_an_item_of_the_wrong_shape_is_dropped_even_without_a_key(redis, caplog, item_id, kind, data, why):
    # Given an unkeyed outbox (local use, no secrets): items are still checked
    forge(redis, item_id, kind, data)
    sink = Recorder(Delivery(ok=True))
    with caplog.at_level("ERROR", logger="daemon.adapters.outbox"):
        landed = Outbox(redis, max_age_s=3600).drain_once({"row": sink, "callback": sink}, delay=never)
    assert landed == 0 and sink.items == [] and not redis.exists(ITEM_PREFIX + item_id)
    assert why in caplog.text
