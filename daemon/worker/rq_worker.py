"""The long-running worker: rq's forking `Worker`, with the few changes production needs.

Process model (DESIGN §2): the parent never imports torch or touches CUDA; each job runs in a forked
work-horse, so a crash or OOM-kill of a job is seen by the parent, which reports it and retries the job
(`lost.after_lost_attempt`). The parent heartbeats the job every DAEMON_MONITOR_INTERVAL_S, so a
dead worker's job expires after that + 60 s, and every worker looks for expired jobs every
DAEMON_MAINTENANCE_INTERVAL_S: a lost job is retried within about 90 s. The parent's threads (outbox
drainer, spot-notice watcher) never wait on the job.

What we change in rq, and why:
- SIGTERM means "stop now and requeue", not rq's "finish the job first" (hour-long jobs, systemd's
  TimeoutStopSec, spot notices): the horse gets SIGUSR1, ends its attempt as preempted and rq requeues
  it at the front; after DAEMON_STOP_TIMEOUT_S, or on a second signal, the horse is killed and the parent
  requeues it itself.
- A Redis blip while a job runs is logged, not fatal (rq would quit the worker from its heartbeat).
- Spot notices (DESIGN §3), watched from a thread of the parent (`daemon/fleet/spot.py`): an interruption
  notice means exactly what SIGTERM means (the watcher sends SIGTERM to this process); a rebalance
  recommendation stops taking new jobs and asks the running one for a checkpoint, which then goes on.
  A worker that starts while a notice is up takes no jobs at all (systemd may restart it there).
- Draining by hand (`scripts/drain_instance.sh`, or DRAIN_SIGNAL = SIGRTMIN+2 to the worker): take no new
  jobs and let the running one finish, then idle until stopped (not exit: systemd would restart it into
  taking jobs). A job dequeued in the instant the drain arrived is handed back to the front of its queue.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
import time
from typing import Any

import redis as redis_lib
from rq.exceptions import AbandonedJobError, StopRequested
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.suspension import is_suspended
from rq.worker import Worker

from ..adapters.runtime import Runtime, redis_client
from ..attempt.entry import configure
from ..attempt.interrupts import CHECKPOINT_SIGNAL, PREEMPT_SIGNAL
from ..attempt.policy import Ending
from ..attempt.workdirs import sweep
from ..config import Settings
from ..fleet.imds import MetadataClient
from ..fleet.spot import Notice, SpotWatcher
from ..handlers.registry import peek_kind, registry
from ..telemetry.sentry import capture_abandoned
from .hooks import Operations
from .lost import after_lost_attempt, describe_exit
from .outbox_drainer import OutboxDrainer
from .queue import GuardedJob, make_queue
from .signals import CURRENT_JOB_FIELD, DRAIN_SIGNAL

log = logging.getLogger(__name__)


def job_kind(job: Job) -> str | None:
    """The kind a job names, without validating its spec (see `peek_kind`)."""
    return peek_kind(job.args[0] if job.args else None)


def apply_kind_timeout(job: Job, kind: str | None) -> None:
    """Run every job under its kind's time limit, whatever its producer wrote: `rq enqueue` without
    --timeout would give an hour-long training rq's default of 180 s. Unknown or invalid specs keep
    theirs; they fail fast anyway."""
    handler = registry().get(kind) if kind else None
    if handler is not None and job.timeout != handler.timeout_s:
        log.info("job %s: timeout %ss (kind %s)", job.id, handler.timeout_s, kind)
        job.timeout = handler.timeout_s


class DaemonWorker(Worker):
    def __init__(self, settings: Settings, *, connection: redis_lib.Redis | None = None) -> None:
        self.settings = settings
        self.runtime = Runtime.for_this_process(settings)
        connection = connection or redis_client(settings.redis_url)
        super().__init__(
            [make_queue(name, connection) for name in settings.queues],
            name=settings.worker_name,
            connection=connection,
            serializer=JSONSerializer,
            job_class=GuardedJob,
            job_monitoring_interval=settings.monitor_interval_s,
            maintenance_interval=settings.maintenance_interval_s,
            exception_handlers=[self.on_job_exception],
            # rq's CLI makes the description the call with its arguments: the spec, presigned URLs and
            # all. Log the job id only.
            log_job_description=False,
            work_horse_killed_handler=self.on_horse_killed,
        )
        # systemd, /healthz + /metrics, the backlog metric, scale-in protection: see hooks.py.
        self.ops = Operations(settings, self.name)
        self._preempting = False
        # The job whose horse ended its attempt (rq requeued or failed it) and was killed afterwards.
        self._ended_by_horse: str | None = None
        self._kill_timer: threading.Timer | None = None
        self.drainer = OutboxDrainer(self.runtime)
        self.spot: SpotWatcher | None = None
        # Why this worker takes no new jobs: a spot notice (the instance is going away) or an operator's
        # drain. None while it takes jobs.
        self.draining: str | None = None
        self._working = False
        self._stop_reason: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def work(self, **kwargs: Any) -> bool:  # type: ignore[override]
        # First thing: the signal's default action would kill the worker (rq installs its own
        # handlers only after it logs "Listening", when a drain may already have been sent).
        signal.signal(DRAIN_SIGNAL, self.request_drain)
        configure(self.settings)
        # Everything imported so far lives as long as the worker: move it out of the collector's
        # reach, so a forked job's garbage collections don't touch (and copy) the parent's pages.
        gc.freeze()
        sweep(self.settings.work_dir)
        # One metadata client (and IMDSv2 token) for the fleet identity and the spot watcher.
        metadata = MetadataClient(self.settings.imds_url) if self.settings.imds_url else None
        self.ops.start(self.connection, metadata)  # before the first fork (rq's scheduler, each job)
        self.drainer.start()
        self.spot = self._watch_spot_notices(metadata)
        try:
            self._working = True
            return super().work(with_scheduler=True, **kwargs)
        finally:
            if self._kill_timer:
                self._kill_timer.cancel()
            if self.spot is not None:
                self.spot.stop()
            self.ops.stop()
            self.drainer.stop()

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self.ops.ready()  # registered in Redis and about to dequeue: systemd's "started"

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """rq calls this on every turn of the dequeue loop, after each job and, through
        maintain_heartbeats, while a job runs: the main loop's pulse for systemd's watchdog and
        /healthz. Ticked first, so a Redis outage does not read as a hung worker."""
        self.ops.tick()
        super().heartbeat(timeout, pipeline)

    # -- spot notices ----------------------------------------------------------------------------

    def _watch_spot_notices(self, metadata: MetadataClient | None) -> SpotWatcher | None:
        if metadata is None:
            log.info("spot notices not watched (IMDS_URL is empty)")
            return None
        watcher = SpotWatcher(
            metadata,
            on_interruption=self.on_spot_interruption,
            on_rebalance=self.on_rebalance_recommendation,
            interval_s=self.settings.spot_poll_interval_s,
        )
        watcher.poll_once()  # a notice already up: know it before the first dequeue
        return watcher.start()

    def on_spot_interruption(self, notice: Notice) -> None:
        left = notice.seconds_left()
        log.warning(
            "spot interruption notice: %s at %s (%s left)",
            notice.action or "interruption",
            notice.deadline.isoformat() if notice.deadline else "an unknown time",
            f"{left:.0f}s" if left is not None else "unknown",
        )
        when = notice.deadline.isoformat() if notice.deadline else "an unknown time"
        self.draining = f"spot interruption notice ({notice.action or 'interruption'} at {when})"
        self.ops.draining(self.draining)
        self._stop_reason = f"spot interruption notice ({notice.action or 'interruption'} at {when})"
        if self._working:
            # The same path as systemd's SIGTERM: preempt the job (checkpoint, requeue), then exit.
            # Restarted on this instance, the worker sees the notice before its first dequeue and idles.
            os.kill(os.getpid(), signal.SIGTERM)

    def on_rebalance_recommendation(self, notice: Notice) -> None:
        log.warning("rebalance recommendation: no new jobs here; the running job checkpoints and goes on")
        self.draining = self.draining or "spot rebalance recommendation"
        self.ops.draining(self.draining)
        if self.horse_pid:
            self._signal_horse(CHECKPOINT_SIGNAL)

    def request_drain(self, signum: int, frame: Any) -> None:
        """DRAIN_SIGNAL: no new jobs; the running job (if any) finishes as usual."""
        if self.draining is None:
            self.draining = "drain requested by an operator"
            self.ops.draining(self.draining)
            busy = f"job {self.get_current_job_id()} finishes first" if self.horse_pid else "idle"
            log.warning("drain requested: taking no new jobs (%s)", busy)

    def check_for_suspension(self, burst: bool) -> None:
        """Before each dequeue: rq's suspension, and ours while draining (a spot notice, or an operator):
        idle, alive, so systemd does not restart us into taking jobs on an instance that is going away."""
        suspended = False
        while not burst and not self._stop_requested and is_suspended(self.connection, self):
            # rq's own wait (`rq suspend`) has no hook: wait here, keeping systemd's watchdog fed.
            if not suspended:
                suspended = True
                log.warning("suspended (rq suspend): taking no new jobs until `rq resume`")
            self.ops.tick()
            time.sleep(1.0)
        if suspended:
            log.warning("resumed (rq resume): taking jobs again")
        super().check_for_suspension(burst)
        if self.draining is not None:
            self._idle_while_draining(burst)

    def _idle_while_draining(self, burst: bool) -> None:
        if burst:
            raise StopRequested()
        log.warning("taking no new jobs: %s", self.draining)
        last_beat = time.monotonic()
        while not self._stop_requested:
            time.sleep(1.0)
            self.ops.tick()
            if time.monotonic() - last_beat >= self.settings.monitor_interval_s:
                self.heartbeat()
                last_beat = time.monotonic()
        raise StopRequested()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        while True:
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            if result is None:
                return None
            if self.draining is not None:
                # The drain arrived while we waited for a job: give it back, first in line, untouched.
                self._hand_back(result, "this worker is draining")
                self._idle_while_draining(burst=timeout is None)
            if timeout is None or not is_suspended(self.connection):
                return result
            # rq looks at `rq suspend` only between jobs; an idle worker waits inside the dequeue, so
            # without this it would take the next job anyway.
            self._hand_back(result, "workers are suspended")
            self.check_for_suspension(burst=False)
            if self._stop_requested:
                raise StopRequested()

    def _hand_back(self, result: tuple[Any, Any], why: str) -> None:
        job, queue = result
        with self.connection.pipeline() as pipe:
            pipe.lrem(IntermediateQueue(queue.key, self.connection).key, 1, job.id)
            queue.push_job_id(job.id, pipeline=pipe, at_front=True)
            pipe.execute()
        log.info("job %s handed back to queue %s: %s", job.id, queue.name, why)

    def handle_warm_shutdown_request(self) -> None:
        """First SIGTERM/SIGINT: ask the running job to stop and requeue; kill it if it won't."""
        if not self.horse_pid:
            log.info("stop requested while idle")
            self.ops.stopping("stopping (idle)")
            return
        log.warning("stop requested: preempting the running job (grace %.0fs)", self.settings.stop_timeout_s)
        self._preempting = True
        self.ops.stopping(
            f"preempting job {self.get_current_job_id()}", grace_s=self.settings.stop_timeout_s + 30
        )
        self._note_stop_reason(self._stop_reason or "the worker was stopped (SIGTERM: shutdown or scale-in)")
        self._signal_horse(PREEMPT_SIGNAL)
        self._kill_timer = threading.Timer(self.settings.stop_timeout_s, self._kill_stuck_horse)
        self._kill_timer.daemon = True
        self._kill_timer.start()

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Second signal: kill the job now; it is requeued by `on_horse_killed` before we exit."""
        log.warning("forced stop: killing the running job")
        self._preempting = True
        if self.horse_pid:
            self._signal_horse(signal.SIGKILL)
        else:
            raise SystemExit()

    def _note_stop_reason(self, reason: str) -> None:
        job_id = self.get_current_job_id()
        if job_id is None:
            return
        try:
            self.runtime.ledger.set_stop_reason(job_id, reason)
        except redis_lib.RedisError as exc:  # the row then gives the generic reason
            log.warning("stop reason not recorded: %s", exc)

    def _kill_stuck_horse(self) -> None:
        if self.horse_pid:
            log.error("job did not stop within %.0fs; killing it", self.settings.stop_timeout_s)
            self._signal_horse(signal.SIGKILL)

    def _signal_horse(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.horse_pid, sig)

    # -- rq hooks --------------------------------------------------------------------------------

    def execute_job(self, job: Job, queue: Any) -> None:
        kind = job_kind(job)
        apply_kind_timeout(job, kind)
        self._publish_current_job(job.id)
        self.ops.job_started(job.id, kind)
        try:
            super().execute_job(job, queue)
        finally:
            self.ops.job_finished()
            self._publish_current_job(None)

    def _publish_current_job(self, job_id: str | None) -> None:
        try:
            if job_id is None:
                self.connection.hdel(self.key, CURRENT_JOB_FIELD)
            else:
                self.connection.hset(self.key, CURRENT_JOB_FIELD, job_id)
        except redis_lib.RedisError as exc:  # only the drain command reads it
            log.warning("current job not recorded in Redis: %s", exc)

    def on_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        cause = describe_exit(ret_val)
        ending = Ending.preempted(cause) if self._preempting else Ending.horse_killed(cause)
        try:
            outcome = after_lost_attempt(self.runtime, job, ending)
            if outcome.ended_by_horse:
                self._ended_by_horse = job.id
            else:
                self.ops.job_lost(job_kind(job), outcome.status)
        except Exception:
            log.exception("could not report lost attempt of %s", job.id)

    def handle_job_failure(self, job: Job, queue: Any, *args: Any, **kwargs: Any) -> None:
        # rq runs this right after on_horse_killed. When the horse had ended the attempt itself and rq
        # already requeued or failed the job, doing it again would queue the job twice (or mark a
        # queued job failed): the outcome stands as the horse left it.
        if self._ended_by_horse == job.id:
            self._ended_by_horse = None
            log.info("job %s: its horse's own ending stands; rq's failure handling skipped", job.id)
            return
        super().handle_job_failure(job, queue, *args, **kwargs)

    def on_job_exception(self, job: Job, exc_type: type, exc_value: BaseException, tb: Any) -> bool:
        """rq calls this for job failures and, during registry cleanup, for abandoned jobs."""
        if exc_type is AbandonedJobError or isinstance(exc_value, AbandonedJobError):
            capture_abandoned(job)
            try:
                # A worker that stops heartbeating vanished with its instance (spot, no notice) or
                # was SIGKILLed: not the job's fault, so it is a preemption, not a failure.
                after_lost_attempt(self.runtime, job, Ending.worker_lost("its worker stopped heartbeating"))
            except Exception:
                log.exception("could not report abandoned job %s", job.id)
        return True  # let rq's own handling go on

    @property
    def dequeue_timeout(self) -> int:
        # rq blocks in BLPOP for worker_ttl - 15 s (405 s) while idle and runs maintenance only between
        # two waits, so an idle worker would notice abandoned jobs every ~7 minutes. Waking up every
        # maintenance interval keeps the ~90 s promise; a push still wakes the BLPOP at once.
        return max(1, min(super().dequeue_timeout, self.settings.maintenance_interval_s))

    def maintain_heartbeats(self, job: Job, execution: Any) -> None:
        try:
            super().maintain_heartbeats(job, execution)
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            log.warning("heartbeat not sent, Redis unreachable: %s", exc)
