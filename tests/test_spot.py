"""Spot notices: the IMDSv2 client and the watcher, over real HTTP against the fake metadata service."""

from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.fleet.imds import TOKEN_PATH, MetadataClient, MetadataUnavailable
from daemon.fleet.spot import (
    INSTANCE_ACTION_PATH,
    REBALANCE_PATH,
    Notice,
    SpotWatcher,
    parse_interruption,
    parse_rebalance,
)
from tests.servers.imds import FakeIMDS

REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.01)


class Recorder:
    """A callback that remembers every notice it was given (and can be told to raise)."""

    def __init__(self, raises: bool = False) -> None:
        self.notices: list[Notice] = []
        self.raises = raises
        self._lock = threading.Lock()

    def __call__(self, notice: Notice) -> None:
        with self._lock:
            self.notices.append(notice)
        if self.raises:
            raise RuntimeError("callback blew up")

    def __len__(self) -> int:
        with self._lock:
            return len(self.notices)


@pytest.fixture
def watchers() -> Iterator[list[SpotWatcher]]:
    """Watchers a test starts; all stopped afterwards."""
    started: list[SpotWatcher] = []
    yield started
    for watcher in started:
        watcher.stop()


def start_watcher(
    watchers: list[SpotWatcher],
    url: str,
    on_interruption: Callable[[Notice], None],
    on_rebalance: Callable[[Notice], None],
    interval_s: float = 0.1,
) -> SpotWatcher:
    client = MetadataClient(url, timeout_s=0.5)
    watcher = SpotWatcher(
        client, on_interruption=on_interruption, on_rebalance=on_rebalance, interval_s=interval_s
    )
    watchers.append(watcher)
    return watcher.start()


def spot_records(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "daemon.fleet.spot" and (level is None or r.levelno == level)
    ]


def raw(
    url: str, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, str]]:
    """One request with nothing added, to see what the fake answers a careless client."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


# -- the fake behaves like IMDSv2 in "required" mode ---------------------------------------------------


def test_fake_imds_enforces_the_imdsv2_rules(imds: FakeIMDS) -> None:
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    # A GET without a token is refused, whatever the path
    assert raw(imds.url, "GET", "/latest/meta-data/instance-id")[0] == 401
    assert raw(imds.url, "GET", "/latest/meta-data/no-such-thing")[0] == 401
    # Tokens: a TTL is required and bounded, proxies are refused, and the path is PUT-only
    assert raw(imds.url, "PUT", TOKEN_PATH)[0] == 400
    for bad in ("0", "21601", "abc", "-5"):
        assert raw(imds.url, "PUT", TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": bad})[0] == 400
    assert raw(imds.url, "PUT", TOKEN_PATH, {**ttl, "X-Forwarded-For": "10.0.0.9"})[0] == 403
    assert raw(imds.url, "GET", TOKEN_PATH)[0] == 405
    status, token, headers = raw(imds.url, "PUT", TOKEN_PATH, ttl)
    assert status == 200 and token and headers["x-aws-ec2-metadata-token-ttl-seconds"] == "60"
    # With the token: answers, 404 for what does not exist (yet)
    auth = {"X-aws-ec2-metadata-token": token}
    assert raw(imds.url, "GET", "/latest/meta-data/instance-id", auth)[:2] == (200, "i-0123456789abcdef0")
    assert raw(imds.url, "GET", INSTANCE_ACTION_PATH, auth)[0] == 404
    assert raw(imds.url, "GET", REBALANCE_PATH, auth)[0] == 404
    assert raw(imds.url, "GET", "/latest/meta-data/no-such-thing", auth)[0] == 404
    assert raw(imds.url, "GET", INSTANCE_ACTION_PATH, {"X-aws-ec2-metadata-token": "forged"})[0] == 401
    # And the log saw it all
    assert imds.token_requests == 1
    assert imds.count("PUT", TOKEN_PATH, 403) == 1


def test_fake_imds_serves_notices_in_the_aws_format(imds: FakeIMDS) -> None:
    # Given a token
    token = raw(imds.url, "PUT", TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[1]
    auth = {"X-aws-ec2-metadata-token": token}
    # When AWS posts both notices
    deadline = imds.trigger_interruption("hibernate", in_seconds=120)
    noticed = imds.trigger_rebalance()
    # Then the bodies are exactly AWS's shape, times in whole seconds with a Z
    action = json.loads(raw(imds.url, "GET", INSTANCE_ACTION_PATH, auth)[1])
    assert action == {"action": "hibernate", "time": deadline.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert 118 <= (deadline - datetime.now(UTC)).total_seconds() <= 120
    rebalance = json.loads(raw(imds.url, "GET", REBALANCE_PATH, auth)[1])
    assert rebalance == {"noticeTime": noticed.strftime("%Y-%m-%dT%H:%M:%SZ")}
    # And clear() withdraws them
    imds.clear()
    assert raw(imds.url, "GET", INSTANCE_ACTION_PATH, auth)[0] == 404


# -- the client ------------------------------------------------------------------------------------------


def test_client_gets_one_token_and_reuses_it(imds: FakeIMDS) -> None:
    client = MetadataClient(imds.url)
    assert client.get("instance-id") == "i-0123456789abcdef0"
    assert client.get(INSTANCE_ACTION_PATH) is None  # 404 → None
    assert client.get("/latest/meta-data/events/recommendations/rebalance") is None
    assert imds.token_requests == 1
    assert imds.count("GET", status=401) == 0


def test_client_refreshes_the_token_before_it_expires(imds: FakeIMDS) -> None:
    # Given a client asking for 600 s tokens (refreshed with a tenth of their life left), on a clock the
    # test moves (the fake service's own clock is real: it never sees the token age)
    now = [1000.0]
    client = MetadataClient(imds.url, token_ttl_s=600, clock=lambda: now[0])
    client.get("instance-id")
    now[0] += 539.0  # 61 s of life left: more than the margin
    client.get("instance-id")
    assert imds.token_requests == 1
    # When the token is about to run out (59 s left)
    now[0] += 2.0
    client.get("instance-id")
    # Then a new one was fetched first: no GET was ever refused
    assert imds.token_requests == 2
    assert imds.count("GET", status=401) == 0
    assert imds.count("GET", status=200) == 3
    # And the new token's life counts from when it was asked for
    now[0] += 539.0
    client.get("instance-id")
    assert imds.token_requests == 2


def test_client_gets_a_new_token_after_a_401_and_retries_once(imds: FakeIMDS) -> None:
    client = MetadataClient(imds.url)
    client.get("instance-id")
    # When the service forgets every token (a restart of IMDS, say)
    imds.expire_tokens()
    # Then the next GET is refused, a new token fetched, and the GET retried with it
    assert client.get("instance-id") == "i-0123456789abcdef0"
    assert [(r.method, r.status) for r in imds.requests] == [
        ("PUT", 200),
        ("GET", 200),
        ("GET", 401),
        ("PUT", 200),
        ("GET", 200),
    ]


def test_client_raises_metadata_unavailable_for_outages_and_odd_statuses(
    imds: FakeIMDS,
    no_imds_url: str,
) -> None:
    client = MetadataClient(imds.url, timeout_s=0.5)
    imds.serve(INSTANCE_ACTION_PATH, "busy", status=503)
    with pytest.raises(MetadataUnavailable) as odd:
        client.get(INSTANCE_ACTION_PATH)
    assert odd.value.status == 503
    imds.set_down(True)
    with pytest.raises(MetadataUnavailable) as dropped:
        client.get("instance-id")
    assert dropped.value.status is None
    with pytest.raises(MetadataUnavailable) as refused:
        MetadataClient(no_imds_url, timeout_s=0.5).get("instance-id")
    assert refused.value.status is None


def test_client_ignores_proxy_settings(imds: FakeIMDS, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy would add X-Forwarded-For (refused by AWS) or fail to reach a link-local address
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nothing answers there
    assert MetadataClient(imds.url).get("instance-id") == "i-0123456789abcdef0"


# -- parsing -------------------------------------------------------------------------------------------


def test_interruption_and_rebalance_are_parsed_with_their_exact_times(imds: FakeIMDS) -> None:
    client = MetadataClient(imds.url)
    deadline = imds.trigger_interruption("stop", in_seconds=90)
    noticed = imds.trigger_rebalance()
    body = client.get(INSTANCE_ACTION_PATH)
    assert body is not None
    notice = parse_interruption(body)
    assert (notice.kind, notice.action, notice.deadline) == ("interruption", "stop", deadline)
    assert notice.deadline is not None and notice.deadline.tzinfo is not None
    left = notice.seconds_left()
    assert left is not None and 88 <= left <= 90
    body = client.get(REBALANCE_PATH)
    assert body is not None
    assert parse_rebalance(body) == Notice("rebalance", None, None, noticed)


def test_a_malformed_notice_is_still_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    for body in ("<html>gateway</html>", "[1, 2]", ""):
        notice = parse_interruption(body)
        assert (notice.kind, notice.action, notice.deadline) == ("interruption", None, None)
    assert len(spot_records(caplog, logging.WARNING)) == 3
    # A readable action with an unreadable time keeps the action
    notice = parse_interruption('{"action": "terminate", "time": "soon"}')
    assert (notice.action, notice.deadline, notice.seconds_left()) == ("terminate", None, None)
    # A rebalance without a readable noticeTime is dated when we read it
    before = datetime.now(UTC)
    assert parse_rebalance("{}").noticed_at >= before


# -- the watcher ---------------------------------------------------------------------------------------


def test_watcher_stays_quiet_while_there_is_no_notice(imds: FakeIMDS, watchers: list[SpotWatcher]) -> None:
    interrupted, rebalanced = Recorder(), Recorder()
    start_watcher(watchers, imds.url, interrupted, rebalanced)
    wait_until(lambda: imds.count("GET", INSTANCE_ACTION_PATH, 404) >= 4, what="four polls")
    assert len(interrupted) == 0 and len(rebalanced) == 0
    assert imds.count("GET", REBALANCE_PATH, 404) >= 3  # both paths are polled
    assert imds.token_requests == 1


def test_watcher_delivers_each_notice_once_and_independently(
    imds: FakeIMDS, watchers: list[SpotWatcher]
) -> None:
    interrupted, rebalanced = Recorder(), Recorder()
    start_watcher(watchers, imds.url, interrupted, rebalanced)
    # When a rebalance recommendation comes first
    noticed = imds.trigger_rebalance()
    wait_until(lambda: len(rebalanced) == 1, timeout=30.0, what="rebalance callback")
    assert rebalanced.notices[0] == Notice("rebalance", None, None, noticed)
    assert len(interrupted) == 0
    # And then the interruption notice
    deadline = imds.trigger_interruption("terminate", in_seconds=120)
    wait_until(lambda: len(interrupted) == 1, timeout=30.0, what="interruption callback")
    notice = interrupted.notices[0]
    assert (notice.kind, notice.action, notice.deadline) == ("interruption", "terminate", deadline)
    # Then neither is delivered again, however many polls see them
    polls = imds.count("GET", INSTANCE_ACTION_PATH, 200)
    wait_until(lambda: imds.count("GET", INSTANCE_ACTION_PATH, 200) >= polls + 4, what="more polls")
    assert len(interrupted) == 1 and len(rebalanced) == 1


def test_watcher_delivers_a_notice_that_comes_back_after_being_withdrawn(
    imds: FakeIMDS, watchers: list[SpotWatcher]
) -> None:
    interrupted = Recorder()
    start_watcher(watchers, imds.url, interrupted, Recorder())
    imds.trigger_interruption("stop", in_seconds=120)
    wait_until(lambda: len(interrupted) == 1, what="first notice")
    imds.clear()
    wait_until(lambda: imds.count("GET", INSTANCE_ACTION_PATH, 404) >= 2, what="the withdrawal to be seen")
    imds.trigger_interruption("terminate", in_seconds=100)
    wait_until(lambda: len(interrupted) == 2, what="second notice")
    assert [n.action for n in interrupted.notices] == ["stop", "terminate"]


def test_watcher_delivers_an_unreadable_notice_with_unknown_deadline(
    imds: FakeIMDS, watchers: list[SpotWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    interrupted = Recorder()
    start_watcher(watchers, imds.url, interrupted, Recorder())
    imds.serve(INSTANCE_ACTION_PATH, '{"action": "terminate", "ti')
    wait_until(lambda: len(interrupted) == 1, timeout=30.0, what="interruption callback")
    assert (interrupted.notices[0].action, interrupted.notices[0].deadline) == (None, None)
    assert any("unreadable spot interruption notice" in r.getMessage() for r in spot_records(caplog))


def test_off_ec2_the_watcher_says_so_once_and_ends(
    no_imds_url: str,
    watchers: list[SpotWatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="daemon.fleet.spot")
    interrupted, rebalanced = Recorder(), Recorder()
    watcher = start_watcher(watchers, no_imds_url, interrupted, rebalanced)
    watcher.join(timeout=1.0)
    assert not watcher.is_alive()
    records = spot_records(caplog)
    assert [r.levelno for r in records] == [logging.INFO]
    assert "no instance metadata service at" in records[0].getMessage()
    assert "spot notices are not watched" in records[0].getMessage()
    assert len(interrupted) == 0 and len(rebalanced) == 0


def test_an_outage_is_logged_once_and_its_end_too(
    imds: FakeIMDS, watchers: list[SpotWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.fleet.spot")
    interrupted = Recorder()
    start_watcher(watchers, imds.url, interrupted, Recorder())
    wait_until(lambda: imds.count("GET", INSTANCE_ACTION_PATH, 404) >= 1, what="a first poll")
    # When the service stops answering for several polls
    imds.set_down(True)
    wait_until(lambda: imds.count("GET", status=None) >= 5, what="five dropped polls")
    # Then one warning, not one per poll
    warnings = spot_records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    # When it is back
    imds.set_down(False)
    wait_until(
        lambda: any("is back" in r.getMessage() for r in spot_records(caplog, logging.INFO)), what="recovery"
    )
    # Then notices are delivered again
    imds.trigger_interruption()
    wait_until(lambda: len(interrupted) == 1, timeout=30.0, what="interruption after the outage")
    assert len(spot_records(caplog, logging.WARNING)) == 2  # the outage, then the notice itself


def test_a_callback_that_raises_does_not_stop_the_watcher(
    imds: FakeIMDS, watchers: list[SpotWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    interrupted, rebalanced = Recorder(raises=True), Recorder()
    watcher = start_watcher(watchers, imds.url, interrupted, rebalanced)
    imds.trigger_interruption()
    wait_until(lambda: bool(spot_records(caplog, logging.ERROR)), timeout=30.0, what="the logged exception")
    error = spot_records(caplog, logging.ERROR)[0]
    assert error.exc_info is not None and "callback failed" in error.getMessage()
    # Then the watcher goes on: a rebalance still arrives, and the failed one is not retried every poll
    imds.trigger_rebalance()
    wait_until(lambda: len(rebalanced) == 1, timeout=30.0, what="rebalance callback")
    assert watcher.is_alive() and len(interrupted) == 1


def test_stop_ends_the_watcher_without_waiting_for_the_interval(
    imds: FakeIMDS, watchers: list[SpotWatcher]
) -> None:
    watcher = start_watcher(watchers, imds.url, Recorder(), Recorder(), interval_s=120.0)
    wait_until(lambda: imds.count("GET", REBALANCE_PATH) >= 1, what="a first poll")
    started = time.monotonic()
    watcher.stop()
    # it does not sit out its 120 s wait
    assert not watcher.is_alive() and time.monotonic() - started < 30.0


# -- the standalone fake, for manual drills --------------------------------------------------------------


def test_standalone_fake_takes_notices_from_its_control_interface() -> None:
    # Given the fake started the way an operator would (on a port the system picks)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "tests.servers.imds", "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[3]  # "fake IMDS at http://127.0.0.1:PORT (Ctrl-C to stop)"
        client = MetadataClient(url)
        assert client.get(INSTANCE_ACTION_PATH) is None
        # When the operator posts a notice by hand
        status, body, _ = raw(url, "POST", "/__control/interruption?action=stop&in=60")
        assert status == 200 and json.loads(body)["action"] == "stop"
        # Then a worker's client sees it, the AWS way
        seen = client.get(INSTANCE_ACTION_PATH)
        assert seen is not None and parse_interruption(seen).action == "stop"
        assert raw(url, "POST", "/__control/interruption?action=explode")[0] == 400
        assert raw(url, "POST", "/__control/clear")[0] == 200
        assert client.get(INSTANCE_ACTION_PATH) is None
        state = json.loads(raw(url, "GET", "/__control/state")[1])
        assert state["instance_action"] is None and state["live_tokens"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=5)
