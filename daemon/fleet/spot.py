"""Spot notices from the EC2 instance metadata service (IMDSv2): what they say, and the watcher thread.

What is polled, and why both (DESIGN §3):

- `/latest/meta-data/spot/instance-action`: the interruption notice, 404 until AWS decides to take the
  instance back, then `{"action": "terminate"|"stop"|"hibernate", "time": "2026-11-23T08:22:00Z"}`,
  about two minutes ahead. The running job must checkpoint and requeue before `time`.
- `/latest/meta-data/events/recommendations/rebalance`: the rebalance recommendation,
  `{"noticeTime": "…"}`, an earlier and softer signal that the instance is at elevated risk. It may come
  long before an interruption, at the same moment, or never: the worker stops taking new work on it but
  lets the running job go on. Neither signal is guaranteed, which is why jobs also checkpoint
  periodically (a sudden loss costs at most one checkpoint interval).

`SpotWatcher` polls both every 5 s, the interval AWS recommends, starting at once (a notice persists, so a
worker restarted inside the two minutes still sees it), and calls back once per distinct notice.

Off EC2 (a laptop, CI, another cloud) nothing answers at 169.254.169.254: the first token request fails,
the watcher logs one info line and its thread ends, with no retry loop and no error spam (if something
there answers the token request with an HTTP error instead, as when IMDS is turned off for the instance,
that one line is a warning). If the service answered once and then stops answering, that is an outage:
one warning, polling goes on, and its return is logged.

The IMDSv2 client (tokens, timeouts, why no proxy, the hop limit) is in `imds.py`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from .imds import META_PREFIX, MetadataClient, MetadataUnavailable

log = logging.getLogger(__name__)

INSTANCE_ACTION_PATH = META_PREFIX + "spot/instance-action"
REBALANCE_PATH = META_PREFIX + "events/recommendations/rebalance"

POLL_INTERVAL_S = 5.0
"""AWS recommends checking for notices every 5 s: a twentieth of the two-minute warning."""

NoticeKind = Literal["interruption", "rebalance"]


@dataclass(frozen=True)
class Notice:
    """One spot notice as read from IMDS. Times are aware UTC datetimes."""

    kind: NoticeKind
    # terminate | stop | hibernate for interruptions; None for rebalance, or when unreadable.
    action: str | None
    # When AWS acts on an interruption; None for rebalance, or unknown (act as if it were imminent).
    deadline: datetime | None
    # Rebalance: AWS's noticeTime; otherwise (or if unreadable) when we first read the notice.
    noticed_at: datetime

    def seconds_left(self, now: datetime | None = None) -> float | None:
        """Seconds until the deadline (negative once past), None when unknown."""
        if self.deadline is None:
            return None
        return (self.deadline - (now or datetime.now(UTC))).total_seconds()


def parse_interruption(body: str, *, now: datetime | None = None) -> Notice:
    """A `spot/instance-action` body. Never raises: an unreadable notice is still a notice."""
    now = now or datetime.now(UTC)
    fields = _json_object(body, "spot interruption notice")
    action = fields.get("action")
    deadline = _parse_time(fields.get("time"))
    if fields and deadline is None:
        log.warning("spot interruption notice without a readable time %r: deadline unknown", body[:200])
    return Notice("interruption", action if isinstance(action, str) else None, deadline, now)


def parse_rebalance(body: str, *, now: datetime | None = None) -> Notice:
    """An `events/recommendations/rebalance` body. Never raises."""
    now = now or datetime.now(UTC)
    fields = _json_object(body, "rebalance recommendation")
    return Notice("rebalance", None, None, _parse_time(fields.get("noticeTime")) or now)


def _json_object(body: str, what: str) -> dict[str, object]:
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        log.warning("unreadable %s %r (%s): treated as a notice with unknown deadline", what, body[:200], exc)
        return {}
    if not isinstance(parsed, dict):
        log.warning("unreadable %s %r (not an object): treated as a notice with unknown deadline", what, body)
        return {}
    return parsed


def _parse_time(value: object) -> datetime | None:
    """IMDS's `2026-11-23T08:22:00Z` (any ISO 8601 form, naive taken as UTC) as aware UTC, else None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class SpotWatcher:
    """A daemon thread that polls both notice paths and calls back once per distinct notice.

    Callbacks run on the watcher thread, so they should be quick (send a signal, set a flag). One that
    raises is logged and the watcher goes on. A notice is "distinct" when its body differs from the last
    one delivered for its kind; once a path answers 404 again, the same body would be delivered anew.
    """

    def __init__(
        self,
        client: MetadataClient,
        *,
        on_interruption: Callable[[Notice], None],
        on_rebalance: Callable[[Notice], None],
        interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.client = client
        self.interval_s = interval_s
        self._callbacks: dict[NoticeKind, Callable[[Notice], None]] = {
            "interruption": on_interruption,
            "rebalance": on_rebalance,
        }
        self._delivered: dict[NoticeKind, str | None] = {"interruption": None, "rebalance": None}
        self._outage_since: float | None = None  # time.monotonic() of the first failed poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spot-watcher", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> SpotWatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Ask the thread to end and wait for it (a poll in flight finishes first, bounded by timeouts)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # -- polling -----------------------------------------------------------------------------------------

    def poll_once(self) -> None:
        """Read both paths once and deliver what is new. Outages are logged here, not raised."""
        try:
            bodies = {"interruption": self.client.get(INSTANCE_ACTION_PATH)}
            bodies["rebalance"] = self.client.get(REBALANCE_PATH)
        except MetadataUnavailable as exc:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning(
                    "instance metadata service unreachable, spot notices unseen until it is back: %s", exc
                )
            return
        if self._outage_since is not None:
            log.info("instance metadata service is back after %.0f s", time.monotonic() - self._outage_since)
            self._outage_since = None
        self._deliver("interruption", bodies["interruption"])
        self._deliver("rebalance", bodies["rebalance"])

    def _run(self) -> None:
        try:
            self.client.token()
        except MetadataUnavailable as exc:
            if exc.status is None:
                log.info(
                    "no instance metadata service at %s (not on EC2?): spot notices are not watched (%s)",
                    self.client.base_url,
                    exc,
                )
            else:
                # Something answered, but not an IMDSv2 we can use: IMDS turned off for the instance
                # (403), or another cloud's metadata server at the same address. Worth a look, once.
                log.warning(
                    "%s answered the IMDSv2 token request with HTTP %s (IMDS turned off, or not EC2?): "
                    "spot notices are not watched",
                    self.client.base_url,
                    exc.status,
                )
            return
        except Exception:  # a bug must not escape the thread either
            log.exception("spot watcher could not start")
            return
        log.info("watching spot notices at %s every %g s", self.client.base_url, self.interval_s)
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a bug here must not end the watch silently
                log.exception("spot notice poll failed")
            self._stop.wait(self.interval_s)

    def _deliver(self, kind: NoticeKind, body: str | None) -> None:
        previous = self._delivered[kind]
        if body == previous:
            return
        self._delivered[kind] = body  # before the callback: one that raises is not called every poll
        if body is None:
            log.info("spot %s notice withdrawn", kind)
            return
        if kind == "interruption":
            notice = parse_interruption(body)
            left = notice.seconds_left()
            log.warning(
                "spot interruption notice: %s at %s (%s)",
                notice.action or "unknown action",
                _when(notice.deadline) if notice.deadline else "unknown time",
                f"in {left:.0f} s" if left is not None else "act now",
            )
        else:
            notice = parse_rebalance(body)
            log.info(
                "spot rebalance recommendation (noticed %s): elevated risk of interruption",
                _when(notice.noticed_at),
            )
        try:
            self._callbacks[kind](notice)
        except Exception:
            log.exception("spot %s callback failed", kind)
