"""What the worker parent tells the world about itself, in one place: systemd (ready, watchdog,
stopping), the /healthz and /metrics server, the fleet's backlog metric and this instance's scale-in
protection. The worker calls a handful of lifecycle hooks; each part stays in its own module
(telemetry/systemd.py, telemetry/health.py, telemetry/metrics.py, fleet/) and none of them can stop a job
or the worker: a part that cannot start logs why and stays off.
"""

from __future__ import annotations

import logging
from pathlib import Path

from redis import Redis

from ..config import DEFAULT_CLOUDWATCH_NAMESPACE, Settings
from ..fleet.backlog import BacklogPublisher
from ..fleet.identity import FleetIdentity
from ..fleet.imds import MetadataClient
from ..fleet.protection import ScaleInProtection
from ..handlers.registry import registry
from ..telemetry import metrics
from ..telemetry.health import HealthServer, WorkerState
from ..telemetry.systemd import Notifier

log = logging.getLogger(__name__)


class Operations:
    def __init__(self, settings: Settings, worker_name: str) -> None:
        self.settings = settings
        self.worker_name = worker_name
        # First, before anything forks: reads and removes NOTIFY_SOCKET / WATCHDOG_* from the environment.
        self.systemd = Notifier.from_env()
        # Created before the first fork: work-horses inherit the state's shared stage slot.
        self.state = WorkerState(worker_name)
        self.health: HealthServer | None = None
        self.backlog: BacklogPublisher | None = None
        self.protection: ScaleInProtection | None = None

    # -- start and stop --------------------------------------------------------------------------

    def start(self, redis: Redis, metadata: MetadataClient | None) -> None:
        """`metadata`: the instance metadata service, None off EC2 (IMDS_URL empty)."""
        log.info("%s", self.systemd.describe())
        self._start_health()
        s = self.settings
        identity = FleetIdentity.discover(metadata, asg_name=s.autoscaling_group, default_region=s.aws_region)
        self.backlog = BacklogPublisher(
            redis,
            identity,
            queues=s.queues,
            namespace=s.cloudwatch_namespace or DEFAULT_CLOUDWATCH_NAMESPACE,
            interval_s=s.fleet_metrics_interval_s,
            owner=self.worker_name,
        ).start()
        if s.scale_in_protection:
            self.protection = ScaleInProtection(redis, identity, worker_name=self.worker_name).start()

    def _start_health(self) -> None:
        s = self.settings
        if s.health_port is None:
            return
        folder = Path(s.metrics_dir) if s.metrics_dir else s.state_dir / "metrics" / self._metrics_name()
        try:
            metrics.setup_multiprocess_dir(folder, kinds=registry().keys())
            metrics.set_stage_listener(self.state.set_stage)
            self.health = HealthServer(
                s.health_bind,
                s.health_port,
                self.state,
                stale_after_s=s.health_stale_s,
                disk_paths=[s.work_dir, s.state_dir],
            ).start()
        except OSError as exc:  # a port in use must not keep a GPU idle
            log.error("no /healthz and /metrics on %s:%s: %s", s.health_bind, s.health_port, exc)
            self.health = None

    def _metrics_name(self) -> str:
        # One folder per worker that survives its restarts (so old ones don't pile up): its port.
        port = self.settings.health_port
        return f"port-{port}" if port else self.worker_name

    def stop(self) -> None:
        """At worker exit, after the running job (if any) has been requeued."""
        for part in (self.protection, self.backlog, self.health):
            if part is not None:
                part.stop()

    # -- the worker's lifecycle ------------------------------------------------------------------

    def ready(self) -> None:
        self.systemd.ready(f"serving {','.join(self.settings.queues)}")

    def tick(self) -> None:
        """The main loop is alive: every dequeue turn, every heartbeat while a job runs, while idle."""
        self.state.tick()
        self.systemd.watchdog_ping()

    def job_started(self, job_id: str, kind: str | None) -> None:
        """In the parent, before the fork: protected from scale-in before the job runs."""
        self.state.job_started(job_id, kind)
        self.systemd.status(f"running job {job_id} ({kind or 'unknown kind'})")
        if self.protection is not None:
            self.protection.busy()

    def job_finished(self) -> None:
        self.state.job_finished()
        self.systemd.status("idle")
        if self.protection is not None:
            self.protection.idle()

    def job_lost(self, kind: str | None, outcome: str) -> None:
        """An attempt whose horse died: it never counted itself, so the parent does."""
        metrics.job_ended(kind or "unknown", outcome, seconds=self.state.running_s())

    def draining(self, reason: str) -> None:
        self.state.set_draining(reason)
        self.systemd.status(f"taking no new jobs: {reason}")

    def stopping(self, status: str, *, grace_s: float = 0.0) -> None:
        """A stop began; `grace_s` asks systemd for that much more time to checkpoint first."""
        self.state.set_draining(status)
        self.systemd.stopping(status)
        if grace_s:
            self.systemd.extend_timeout(int(grace_s * 1_000_000))
