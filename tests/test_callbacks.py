"""Signed callbacks against a real receiver that verifies with the `standardwebhooks` package."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from standardwebhooks import Webhook

from daemon.adapters.callbacks import (
    CallbackEvent,
    CallbackSender,
    CallbackSigner,
    backoff_delay,
    build_event,
)
from daemon.adapters.outbox import DUE_KEY, ITEM_PREFIX, Delivery, Outbox
from daemon.adapters.runtime import Runtime
from daemon.config import load_settings
from daemon.errors import ConfigError, InputError
from daemon.spec.fields import redact_url
from daemon.worker.outbox_drainer import OutboxDrainer, delivery_lane
from tests.fixtures_daemon import wait_until
from tests.servers.raw_http import RawHttpServer
from tests.servers.webhook_receiver import WebhookReceiver

OUTPUTS = {"splat.ply": {"uri": "https://cdn.example.com/p1/splat.ply", "size": 52428800}}


def make_event(
    url: str, type: str = "job.completed", seq: int = 7, data: dict | None = None, fmt: str = "standard"
) -> CallbackEvent:
    """A job-1 / attempt-2 event for project p1 at a fixed instant."""
    event = build_event(
        url=url,
        type=type,
        job_id="job-1",
        attempt=2,
        seq=seq,
        data={"outputs": OUTPUTS} if data is None else data,
        fmt=fmt,
        metadata={"project_id": "p1"},
        at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    )
    assert event is not None
    return event


@pytest.fixture
def sender(webhook_receiver: WebhookReceiver) -> Iterator[CallbackSender]:
    with CallbackSender(CallbackSigner(webhook_receiver.secret), timeout_s=2.0) as s:
        yield s


# -- signing ------------------------------------------------------------------------------------------


def test_delivered_event_verifies_with_standardwebhooks(webhook_receiver, sender):
    # Given a completed event for a hook URL on the receiver
    event = make_event(webhook_receiver.url + "/api/webhook/job-1")

    # When it is delivered
    outcome = sender.deliver(event)

    # Then the receiver verified it and got exactly our body under our id
    assert outcome.ok and outcome.status == 204 and outcome.error is None
    got = webhook_receiver.wait_for(lambda e: e.type == "job.completed")
    assert got.webhook_id == event.webhook_id and got.path == "/api/webhook/job-1"
    assert got.body == event.body
    assert got.json["data"]["job_id"] == "job-1"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "capture-daemon/1"
    assert webhook_receiver.rejected == []


def test_signature_is_the_spec_hmac_and_equals_the_package_sign():
    # Given a signer and an event
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    event = make_event("https://example.com/hook")

    # When headers are made for a fixed instant
    headers = CallbackSigner(secret).headers(event, now=1_700_000_000.9)

    # Then they carry whole seconds and the HMAC of "{id}.{ts}.{body}", as the package signs it
    assert headers["webhook-id"] == event.webhook_id
    assert headers["webhook-timestamp"] == "1700000000"
    signed = f"{event.webhook_id}.1700000000.".encode() + event.body
    expected = base64.b64encode(hmac.new(b"k" * 32, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    package = Webhook(secret).sign(
        event.webhook_id, datetime.fromtimestamp(1_700_000_000, UTC), event.body.decode()
    )
    assert headers["webhook-signature"] == package


def test_tampered_body_is_rejected_by_the_receiver(webhook_receiver):
    # Given correctly signed headers for an event
    event = make_event(webhook_receiver.url + "/hook")
    headers = CallbackSigner(webhook_receiver.secret).headers(event)

    # When the body is changed in transit
    tampered = event.body.replace(b"splat.ply", b"evil.ply")
    response = httpx.post(webhook_receiver.url + "/hook", content=tampered, headers=headers)

    # Then the receiver answers 401 and records it as rejected, not as an event
    assert response.status_code == 401
    assert len(webhook_receiver.rejected) == 1 and webhook_receiver.events == []
    assert "signature" in (webhook_receiver.rejected[0].reason or "").lower()


def test_retries_keep_the_id_but_sign_each_attempt_afresh(webhook_receiver):
    # Given a receiver that fails twice, and a clock that moves between attempts
    webhook_receiver.fail_next(2, status=503)
    ticks = iter([time.time() - 120, time.time() - 60, time.time()])
    event = make_event(webhook_receiver.url + "/hook")
    with CallbackSender(CallbackSigner(webhook_receiver.secret), clock=lambda: next(ticks)) as sender:
        # When the same event is delivered three times
        outcomes = [sender.deliver(event) for _ in range(3)]

    # Then every attempt verified, carried the same id, and had its own timestamp and signature
    assert [o.ok for o in outcomes] == [False, False, True]
    attempts = webhook_receiver.attempts
    assert [a.status for a in attempts] == [503, 503, 204]
    assert {a.webhook_id for a in attempts} == {event.webhook_id}
    assert len({a.headers["webhook-timestamp"] for a in attempts}) == 3
    assert len({a.headers["webhook-signature"] for a in attempts}) == 3


def test_rebuilt_event_keeps_its_id_and_other_events_do_not_share_it():
    # Given an event built once, then rebuilt later (as after a crash) with a new timestamp
    first = make_event("https://example.com/h", fmt="standard")
    again = build_event(
        url="https://example.com/h",
        type="job.completed",
        job_id="job-1",
        attempt=2,
        seq=7,
        data={"outputs": OUTPUTS},
        metadata={"project_id": "p1"},
    )

    # Then the id is the same; a different seq, attempt or type gives another id
    assert again is not None and again.webhook_id == first.webhook_id
    assert first.webhook_id.startswith("msg_")
    assert make_event("https://example.com/h", seq=8).webhook_id != first.webhook_id
    assert make_event("https://example.com/h", type="job.failed").webhook_id != first.webhook_id


# -- payload shapes -----------------------------------------------------------------------------------


def test_standard_body_is_compact_sorted_json_with_the_envelope():
    event = make_event("https://example.com/h", type="job.progress", data={"progress": 40, "stage": "train"})
    assert event.body == json.dumps(json.loads(event.body), separators=(",", ":"), sort_keys=True).encode()
    assert json.loads(event.body) == {
        "type": "job.progress",
        "timestamp": "2026-01-02T03:04:05.678Z",
        "data": {
            "job_id": "job-1",
            "attempt": 2,
            "seq": 7,
            "progress": 40,
            "stage": "train",
            "metadata": {"project_id": "p1"},
        },
    }


def test_standard_data_may_not_override_the_envelope_fields():
    with pytest.raises(ValueError, match="job_id"):
        make_event("https://example.com/h", data={"job_id": "other"})


def test_legacy_completed_has_the_seed_shape():
    event = make_event("https://example.com/h", fmt="legacy")
    assert json.loads(event.body) == {
        "status": "completed",
        "project_id": "p1",
        "model_url": "https://cdn.example.com/p1/splat.ply",
        "file_size": 52428800,
    }


@pytest.mark.parametrize("type, status", [("job.failed", "failed"), ("job.canceled", "canceled")])
def test_legacy_failure_carries_the_error_message(type, status):
    data = {"error": {"code": "invalid_input", "message": "Only 2 images; need at least 3"}}
    event = make_event("https://example.com/h", type=type, fmt="legacy", data=data)
    assert json.loads(event.body) == {"status": status, "project_id": "p1", "error": data["error"]["message"]}


def test_legacy_video_job_includes_scene_id():
    event = build_event(
        url="https://example.com/h",
        type="job.completed",
        job_id="v1",
        attempt=1,
        seq=3,
        data={"outputs": OUTPUTS},
        fmt="legacy",
        metadata={"scene_id": "my-scene-123"},
    )
    assert event is not None
    assert json.loads(event.body)["scene_id"] == "my-scene-123"


@pytest.mark.parametrize("type", ["job.started", "job.progress", "job.requeued"])
def test_legacy_clients_get_no_intermediate_events(type):
    event = build_event(
        url="https://example.com/h",
        type=type,
        job_id="j",
        attempt=1,
        seq=1,
        data={},
        fmt="legacy",
        metadata={"project_id": "p1"},
    )
    assert event is None


def test_unknown_type_or_format_is_refused():
    with pytest.raises(ValueError, match="type"):
        build_event(url="u", type="job.done", job_id="j", attempt=1, seq=1, data={})
    with pytest.raises(ValueError, match="format"):
        build_event(url="u", type="job.failed", job_id="j", attempt=1, seq=1, data={}, fmt="v2")


def test_naive_timestamps_are_refused():
    with pytest.raises(ValueError, match="timezone"):
        build_event(
            url="u", type="job.failed", job_id="j", attempt=1, seq=1, data={}, at=datetime(2026, 1, 1)
        )


# -- delivery outcomes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, retryable",
    [
        (500, True),
        (503, True),
        (429, True),
        (408, True),
        (409, True),
        (425, True),
        (400, False),
        (404, False),
        (410, False),
        (301, False),
    ],
)
def test_failure_statuses_are_classified(webhook_receiver, sender, status, retryable):
    # Given a receiver that answers the next request with `status`
    webhook_receiver.fail_next(1, status=status)

    # When an event is delivered
    outcome = sender.deliver(make_event(webhook_receiver.url + "/hook"))

    # Then it failed, retryable or not as the status says, and nothing followed a redirect
    assert not outcome.ok and outcome.status == status and outcome.retryable is retryable
    assert outcome.error and str(status) in outcome.error
    assert [a.path for a in webhook_receiver.attempts] == ["/hook"]


def test_gone_and_redirect_say_what_to_do(webhook_receiver, sender):
    webhook_receiver.fail_next(1, status=410)
    assert "Gone" in (sender.deliver(make_event(webhook_receiver.url + "/h")).error or "")
    webhook_receiver.fail_next(1, status=308)
    assert "final callback URL" in (sender.deliver(make_event(webhook_receiver.url + "/h")).error or "")


def test_timeout_is_retryable(webhook_receiver):
    # Given a receiver that holds the request far longer than the sender waits (released when the test ends)
    webhook_receiver.stall_next(1, seconds=60.0)
    with CallbackSender(CallbackSigner(webhook_receiver.secret), timeout_s=0.3) as sender:
        # When an event is delivered
        outcome = sender.deliver(make_event(webhook_receiver.url + "/hook"))

    # Then the attempt gave up on its own, long before the receiver answered, and may be retried
    assert not outcome.ok and outcome.retryable and outcome.status is None
    assert "timed out" in (outcome.error or "") and outcome.elapsed_s < 30.0


def test_connection_refused_is_retryable_and_error_hides_the_query():
    # Given a loopback port with nobody listening
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    signer = CallbackSigner("whsec_" + base64.b64encode(b"x" * 24).decode())

    # When an event with a token in its URL is delivered there
    with CallbackSender(signer, timeout_s=1.0) as sender:
        outcome = sender.deliver(make_event(f"http://127.0.0.1:{port}/h?token=sekrit"))

    # Then it is a retryable failure whose error does not leak the token
    assert not outcome.ok and outcome.retryable and outcome.status is None
    assert outcome.error and "sekrit" not in outcome.error


def test_refused_url_is_final_and_nothing_is_sent(webhook_receiver):
    # Given an SSRF guard that refuses the URL (quoting it, as guards do)
    def refuse(url: str) -> None:
        raise InputError(f"{url} resolves to a loopback address")

    url = webhook_receiver.url + "/hook?sig=sekrit"
    with CallbackSender(CallbackSigner(webhook_receiver.secret), check_url=refuse) as sender:
        # When an event for it is delivered
        outcome = sender.deliver(make_event(url))

    # Then the failure is not retryable, names the reason without the query, and no request was made
    assert not outcome.ok and not outcome.retryable and outcome.status is None
    assert outcome.error and "loopback" in outcome.error and "sekrit" not in outcome.error
    assert webhook_receiver.attempts == [] and webhook_receiver.rejected == []


def test_guard_is_called_with_the_url_before_connecting(webhook_receiver):
    seen: list[str] = []
    with CallbackSender(CallbackSigner(webhook_receiver.secret), check_url=seen.append) as sender:
        assert sender.deliver(make_event(webhook_receiver.url + "/h")).ok
    assert seen == [webhook_receiver.url + "/h"]


@pytest.mark.parametrize("url", ["", "not a url?t=sekrit", "ftp://x/y?t=sekrit", "http://[::1/x?t=sekrit"])
def test_unusable_urls_are_final_failures_not_exceptions(url):
    signer = CallbackSigner("whsec_" + base64.b64encode(b"x" * 24).decode())
    with CallbackSender(signer, timeout_s=1.0) as sender:
        outcome = sender.deliver(make_event(url))
    assert not outcome.ok and not outcome.retryable and outcome.status is None
    assert outcome.error and "sekrit" not in outcome.error


def test_redact_url_drops_credentials_query_and_fragment():
    assert redact_url("https://u:pw@h.example:8443/p/q?token=s#frag") == "https://h.example:8443/p/q"


# -- retrying -----------------------------------------------------------------------------------------


def deliver_with_retries(sender: CallbackSender, event: CallbackEvent, *, max_tries: int = 8) -> int:
    """The simplest caller loop: retry retryable failures after backoff_delay. Returns attempts made."""
    rng = random.Random(1)
    for tries in range(max_tries):
        outcome = sender.deliver(event)
        if outcome.ok or not outcome.retryable:
            return tries + 1
        time.sleep(backoff_delay(tries, base_s=0.01, rng=rng))
    raise AssertionError("gave up")


def test_retry_loop_outlasts_a_failing_receiver(webhook_receiver, sender):
    # Given a receiver that fails the next three requests
    webhook_receiver.fail_next(3)
    event = make_event(webhook_receiver.url + "/hook")

    # When a retry loop with backoff delivers the event
    attempts = deliver_with_retries(sender, event)

    # Then the fourth attempt lands, and all four carried the same id
    assert attempts == 4
    assert [a.status for a in webhook_receiver.attempts] == [500, 500, 500, 204]
    assert {a.webhook_id for a in webhook_receiver.attempts} == {event.webhook_id}
    assert len(webhook_receiver.events) == 1


def test_retry_loop_outlasts_an_outage_of_unknown_length(webhook_receiver, sender):
    # Given a receiver in an outage that ends only when its operator ends it
    webhook_receiver.outage(status=503)
    event = make_event(webhook_receiver.url + "/hook")

    # When a retry loop delivers the event, and the outage ends once the loop has tried three times
    with ThreadPoolExecutor(1) as pool:
        tries = pool.submit(deliver_with_retries, sender, event, max_tries=20)
        webhook_receiver.wait_for_attempts(3)
        webhook_receiver.end_outage()
        made = tries.result(timeout=60)

    # Then the event landed once, on the first try after the outage, under the id of every try
    statuses = [a.status for a in webhook_receiver.attempts]
    assert len(statuses) == made >= 4 and statuses[:-1] == [503] * (made - 1) and statuses[-1] == 204
    assert {a.webhook_id for a in webhook_receiver.attempts} == {event.webhook_id}


def test_failures_can_be_aimed_at_one_event_type(webhook_receiver, sender):
    # Given a receiver that refuses the first two completions only
    webhook_receiver.fail_next(2, status=503, type="job.completed")
    progress = make_event(webhook_receiver.url + "/hook", type="job.progress", data={"progress": 50})
    completed = make_event(webhook_receiver.url + "/hook")

    # When progress and completion are each delivered until accepted
    deliver_with_retries(sender, progress)
    made = deliver_with_retries(sender, completed)

    # Then progress went through at once, and the completion on its third try
    assert made == 3
    assert [(a.type, a.status) for a in webhook_receiver.attempts] == [
        ("job.progress", 204),
        ("job.completed", 503),
        ("job.completed", 503),
        ("job.completed", 204),
    ]


def test_backoff_delay_stays_within_full_jitter_bounds_and_grows():
    # Given a seeded rng, many draws per number of tries
    rng = random.Random(42)
    means = []
    for tries in range(12):
        ceiling = min(600.0, 2.0 * 2**tries)
        draws = [backoff_delay(tries, rng=rng) for _ in range(400)]
        # Then every delay is in [0, ceiling], and draws cover the range (full jitter, not equal jitter)
        assert all(0.0 <= d <= ceiling for d in draws)
        assert min(draws) < 0.1 * ceiling and max(draws) > 0.9 * ceiling
        means.append(sum(draws) / len(draws))
    # And the mean doubles until the cap, then stays near cap/2
    assert all(b > 1.6 * a for a, b in zip(means[:8], means[1:9], strict=True))
    assert 250 < means[-1] < 350


def test_backoff_delay_is_reproducible_and_safe_for_huge_tries():
    assert [backoff_delay(t, rng=random.Random(7)) for t in range(5)] == [
        backoff_delay(t, rng=random.Random(7)) for t in range(5)
    ]
    assert 0.0 <= backoff_delay(10_000, cap_s=30.0) <= 30.0
    with pytest.raises(ValueError):
        backoff_delay(-1)


# -- secrets ------------------------------------------------------------------------------------------

SHORT = "whsec_" + base64.b64encode(b"s" * 16).decode()


@pytest.mark.parametrize(
    "secret",
    ["", "c2VrcmV0LXNla3JldC1zZWtyZXQtc2VrcmV0", "whsec_", "whsec_not*base64!", "whsec_abc def", SHORT],
)
def test_bad_secret_is_a_config_error_that_does_not_echo_it(secret):
    with pytest.raises(ConfigError) as info:
        CallbackSigner(secret)
    message = str(info.value)
    assert message.startswith("CALLBACK_SECRET:")
    body = secret.removeprefix("whsec_")
    assert not body or body not in message
    # No chained decoder error either: a traceback must not carry the value along
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_signer_accepts_unpadded_secrets_and_hides_them_in_repr():
    raw = base64.b64encode(b"r" * 32).decode()
    unpadded = "whsec_" + raw.rstrip("=")
    signer = CallbackSigner(unpadded)
    assert raw.rstrip("=") not in repr(signer) and raw.rstrip("=") not in str(signer)
    event = make_event("https://example.com/h")
    Webhook("whsec_" + raw).verify(event.body, signer.headers(event))


def _pinning(policy):
    from daemon.adapters.fetch import pinned_request

    return lambda client, method, url, **kw: pinned_request(client, method, url, policy, **kw)


def test_pinned_delivery_reaches_an_allowed_receiver_with_its_host_header(webhook_receiver):
    # Given the daemon's SSRF pinning, with the receiver's loopback network allowed
    import ipaddress

    from daemon.adapters.fetch import FetchPolicy

    policy = FetchPolicy(allow_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    host_url = webhook_receiver.url.replace("127.0.0.1", "localhost") + "/pinned"
    with CallbackSender(CallbackSigner(webhook_receiver.secret), pin=_pinning(policy)) as sender:
        # When an event for a host name is delivered
        outcome = sender.deliver(make_event(host_url))
    # Then it arrives, verified, and the receiver saw the real host name, not the pinned address
    assert outcome.ok, outcome.error
    received = webhook_receiver.events[-1]
    assert received.path == "/pinned" and received.headers["host"].startswith("localhost:")


def test_pinned_delivery_refuses_a_private_address_without_sending(webhook_receiver):
    # Given the default policy (no network exempt) and a receiver on loopback
    from daemon.adapters.fetch import FetchPolicy

    with CallbackSender(CallbackSigner(webhook_receiver.secret), pin=_pinning(FetchPolicy())) as sender:
        outcome = sender.deliver(make_event(webhook_receiver.url + "/x?token=sekrit"))
    # Then the refusal is final, says why, hides the query, and nothing reached the receiver
    assert not outcome.ok and not outcome.retryable
    assert "url_address_forbidden" in (outcome.error or "") and "sekrit" not in (outcome.error or "")
    assert webhook_receiver.attempts == []


# -- hostile receivers: a whole-delivery deadline, Retry-After, one host never blocks another ------------


SECRET = "whsec_" + base64.b64encode(b"hostile-receivers-secret-0123456").decode()


def test_a_receiver_that_drip_feeds_its_answer_is_cut_off_at_the_deadline():
    # Given a receiver that answers one byte every 50 ms for minutes (each read quick, the whole endless)
    with RawHttpServer("drip") as slow, CallbackSender(CallbackSigner(SECRET), timeout_s=1.0) as sender:
        # When an event is delivered to it
        started = time.monotonic()
        outcome = sender.deliver(make_event(slow.url))
    # Then the delivery gave up on its own, as a retryable timeout (the hang guard: the drip takes 5000 s)
    assert not outcome.ok and outcome.retryable and outcome.status is None
    assert outcome.error == "timed out: no whole answer within 1s"
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), ("Fri, 04 Dec 2026 12:02:00 GMT", 120.0), ("soon", None), (None, None)],
    ids=["delta", "http-date", "unreadable", "absent"],
)
def test_retry_after_of_a_429_or_503_is_read(header, seconds):
    # Given a receiver answering 503 with that Retry-After, and a sender whose clock says 12:00:00
    extra = f"Retry-After: {header}\r\n" if header else ""
    answer = f"HTTP/1.1 503 Service Unavailable\r\n{extra}Content-Length: 0\r\n\r\n".encode()
    noon = datetime(2026, 12, 4, 12, 0, tzinfo=UTC).timestamp()
    with (
        RawHttpServer("answer", answer=answer) as busy,
        CallbackSender(CallbackSigner(SECRET), clock=lambda: noon) as sender,
    ):
        outcome = sender.deliver(make_event(busy.url))
    # Then the outcome carries how long the receiver asked us to wait
    assert (outcome.ok, outcome.status, outcome.retryable) == (False, 503, True)
    assert outcome.retry_after_s == seconds


def test_the_outbox_waits_as_long_as_retry_after_asks_within_its_cap(redis):
    # Given a callback whose receiver said "Retry-After: 120", and a backoff that would retry in 2 s
    outbox = Outbox(redis, max_age_s=3600)
    outbox.put_callback({"url": "https://h.example/", "body": "{}", "type": "job.completed",
                         "job_id": "job-1"}, webhook_id="msg_1")  # fmt: skip
    busy = Delivery(ok=False, retryable=True, error="HTTP 503", retry_after_s=120.0)
    before = time.time()
    outbox.drain_once({"callback": lambda item: busy}, delay=lambda tries: 2.0)
    # Then it is due again no sooner than the receiver asked
    assert redis.zscore(DUE_KEY, "callback:msg_1") >= before + 120


def test_a_slow_receiver_never_holds_up_another_hosts_callbacks(redis, webhook_receiver):
    # Given queued callbacks for two customers: one whose receiver holds every request until the test lets
    # it go, and one whose receiver answers at once
    outbox = Outbox(redis, max_age_s=3600)
    with (
        RawHttpServer("hold") as held,
        CallbackSender(CallbackSigner(webhook_receiver.secret), timeout_s=60) as sender,
    ):
        for n, url in enumerate([held.url, held.url, webhook_receiver.url + "/hook"]):
            event = make_event(url, seq=n)
            outbox.put_callback({"url": event.url, "body": event.body.decode(), "type": event.type,
                                 "job_id": event.job_id}, webhook_id=f"msg_{n}")  # fmt: skip

        def deliver(item):
            data = item.data
            event = CallbackEvent(item.item_id.removeprefix("callback:"), data["url"], data["body"].encode(),
                                  data["type"], data["job_id"])  # fmt: skip
            outcome = sender.deliver(event)
            return Delivery(outcome.ok, outcome.retryable, outcome.error)

        # When the drainer runs (in the background: the held receiver blocks its lane)
        with ThreadPoolExecutor(1) as pool:
            drained = pool.submit(outbox.drain_once, {"callback": deliver}, delay=never_retry,
                                  lane=delivery_lane)  # fmt: skip
            # Then the other customer's callback arrives while the first receiver still holds its request
            webhook_receiver.wait_for(lambda e: e.webhook_id == "msg_2", timeout=60)
            # (the held lane's thread may reach its receiver after the other lane delivered: wait for it)
            wait_until(lambda: held.requests == 1, timeout=60)
            assert held.requests == 1 and not drained.done()
            held.release()
            assert drained.result(timeout=120) == 3  # and the held ones land, in order, once let go
    assert held.requests == 2


def never_retry(tries: int) -> float:
    raise AssertionError("no retry expected")


def test_the_running_drainer_never_makes_a_lane_wait_for_a_busy_one(redis_url, webhook_receiver, tmp_path):
    # Given the worker's drainer running, one customer's receiver holding our request to it
    settings = load_settings({
        "REDIS_URL": redis_url, "DAEMON_ENV_FILE": str(tmp_path / "absent.env"),
        "CALLBACK_SECRET": webhook_receiver.secret, "CALLBACK_TIMEOUT_S": "120",
        "URL_ALLOW_NETWORKS": "127.0.0.1/32", "OUTBOX_POLL_INTERVAL_S": "0.1",
    })  # fmt: skip
    runtime = Runtime(settings)

    def queue(url: str, n: int) -> None:
        event = make_event(url, seq=n)
        runtime.outbox.put_callback({"url": event.url, "body": event.body.decode(), "type": event.type,
                                     "job_id": event.job_id}, webhook_id=f"msg_{n}")  # fmt: skip

    drainer = OutboxDrainer(runtime)
    with RawHttpServer("hold") as held:
        queue(held.url, 0)
        drainer.start()
        try:
            wait_until(lambda: held.requests == 1, timeout=30)
            # When another customer's callback is queued later, in a later round of the drainer
            queue(webhook_receiver.url + "/hook", 1)
            # Then it arrives while the first receiver still holds its request
            webhook_receiver.wait_for(lambda e: e.webhook_id == "msg_1", timeout=60)
            assert held.requests == 1 and runtime.redis.exists(ITEM_PREFIX + "callback:msg_0")
            # And the held one lands once let go
            held.release()
            wait_until(lambda: runtime.outbox.pending() == 0, timeout=60)
        finally:
            drainer.stop()
    assert held.requests == 1


def test_a_stopping_worker_delivers_what_is_due_before_it_exits(redis_url, webhook_receiver, tmp_path):
    # Given a callback queued by the job just before its worker leaves (a spot notice's job.requeued),
    # and a drainer whose next round would be a minute away
    settings = load_settings({
        "REDIS_URL": redis_url, "DAEMON_ENV_FILE": str(tmp_path / "absent.env"),
        "CALLBACK_SECRET": webhook_receiver.secret, "URL_ALLOW_NETWORKS": "127.0.0.1/32",
        "OUTBOX_POLL_INTERVAL_S": "60",
    })  # fmt: skip
    runtime = Runtime(settings)
    event = make_event(webhook_receiver.url + "/hook", type="job.requeued", seq=3)
    runtime.outbox.put_callback({"url": event.url, "body": event.body.decode(), "type": event.type,
                                 "job_id": event.job_id}, webhook_id="msg_last")  # fmt: skip
    # When the worker stops its drainer
    OutboxDrainer(runtime).stop()
    # Then the callback went out in that last round, not a lease later from another worker
    assert [e.webhook_id for e in webhook_receiver.events] == ["msg_last"]
    assert runtime.outbox.pending() == 0
