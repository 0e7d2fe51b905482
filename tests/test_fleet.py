"""Fleet operations against real servers: the backlog metric in moto's CloudWatch, the publisher lease
and the busy set in a private Redis, scale-in protection in moto's Auto Scaling, identity from the fake
IMDS."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from daemon.adapters.aws import aws_client
from daemon.config import DEFAULT_CLOUDWATCH_NAMESPACE
from daemon.fleet.backlog import LEASE_PREFIX, BacklogPublisher
from daemon.fleet.identity import GROUP_TAG_PATH, INSTANCE_ID_PATH, REGION_PATH, FleetIdentity
from daemon.fleet.imds import META_PREFIX, MetadataClient
from daemon.fleet.protection import ScaleInProtection
from daemon.worker.queue import ENTRY_POINT, make_queue
from tests.servers.imds import FakeIMDS
from tests.servers.s3 import MotoS3Server, free_ports

REGION = "us-east-1"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took for `predicate` to hold."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - started


FLEET_LOGGERS = ("daemon.fleet.identity", "daemon.fleet.backlog", "daemon.fleet.protection")


def fleet_logs(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name in FLEET_LOGGERS and r.levelno == level]


@pytest.fixture(scope="module", autouse=True)
def aws_credentials() -> Iterator[None]:
    """Fake keys for signing (moto does not check them); never ask a metadata service for credentials."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
        env.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.delenv("AWS_PROFILE", raising=False)
        yield


class Moto:
    """Clients on the session's moto server and a way to make Auto Scaling groups with instances."""

    def __init__(self, server: MotoS3Server) -> None:
        self.endpoint_url = server.endpoint_url
        self.ec2 = self.client("ec2")
        self.autoscaling = self.client("autoscaling")
        self.cloudwatch = self.client("cloudwatch")
        self.template = f"fleet-tests-{time.monotonic_ns()}"
        self.ec2.create_launch_template(
            LaunchTemplateName=self.template,
            LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g5.xlarge"},
        )

    def client(self, service: str) -> Any:
        return aws_client(service, REGION, endpoint_url=self.endpoint_url)

    def group(self, name: str, instances: int) -> list[str]:
        """A new group with `instances` InService instances; their ids."""
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateName": self.template},
            MinSize=0,
            MaxSize=10,
            DesiredCapacity=instances,
            AvailabilityZones=[f"{REGION}a"],
        )
        group = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        return [i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"]]

    def protected(self, instance_id: str) -> bool:
        found = self.autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])
        return bool(found["AutoScalingInstances"][0]["ProtectedFromScaleIn"])

    def metric(self, group: str, name: str, priority: str | None = None, period: int = 60) -> list[float]:
        """The values of one of our metrics over the last minutes, read back with its dimensions, newest
        first (per `period` seconds: 1 tells successive publications apart)."""
        dimensions = [{"Name": "AutoScalingGroupName", "Value": group}]
        if priority:
            dimensions.append({"Name": "Priority", "Value": priority})
        now = datetime.now(UTC)
        answer = self.cloudwatch.get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "m",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": DEFAULT_CLOUDWATCH_NAMESPACE,
                            "MetricName": name,
                            "Dimensions": dimensions,
                        },
                        "Period": period,
                        "Stat": "Maximum",
                        "Unit": "Count",
                    },
                }
            ],
            StartTime=now - timedelta(minutes=5),
            EndTime=now + timedelta(minutes=1),
            ScanBy="TimestampDescending",
        )
        return list(answer["MetricDataResults"][0]["Values"])


@pytest.fixture(scope="module")
def moto(moto_s3: MotoS3Server, aws_credentials: None) -> Moto:
    return Moto(moto_s3)


@pytest.fixture
def group_name(request: pytest.FixtureRequest) -> str:
    """A group name no other test uses (moto's state lives as long as the session)."""
    return f"{request.node.name[:40]}-{time.monotonic_ns()}"


@pytest.fixture
def stoppers() -> Iterator[list[Callable[[], None]]]:
    """Publishers/protections a test starts are stopped after it, pass or fail."""
    pending: list[Callable[[], None]] = []
    yield pending
    for stop in pending:
        stop()


def enqueue(redis: Redis, queue: str, count: int) -> None:
    """Real rq jobs on our queues, as producers put them (the job data names our entry point)."""
    q = make_queue(queue, redis)
    for n in range(count):
        q.enqueue_call(ENTRY_POINT, args=({"kind": "noop", "job_id": f"{queue}-{n}"},))


# -- backlog ---------------------------------------------------------------------------------------------


def test_backlog_per_priority_total_and_per_instance_read_back_from_cloudwatch(
    moto: Moto, redis: Redis, group_name: str
) -> None:
    # Given a group with 2 InService instances, 3 high and 1 default job waiting, and a low job
    # scheduled for later (a retry in backoff: it cannot run now, so it is no backlog)
    moto.group(group_name, 2)
    enqueue(redis, "high", 3)
    enqueue(redis, "default", 1)
    make_queue("low", redis).enqueue_in(timedelta(minutes=5), ENTRY_POINT, {"kind": "noop"})
    publisher = BacklogPublisher(
        redis,
        FleetIdentity("i-publisher", REGION, group_name),
        autoscaling=moto.autoscaling,
        cloudwatch=moto.cloudwatch,
    )

    # When it publishes once
    backlog = publisher.publish_once()

    # Then CloudWatch holds the counts with their dimensions
    assert backlog is not None and backlog.total == 4 and backlog.in_service == 2
    assert moto.metric(group_name, "Backlog", "high") == [3.0]
    assert moto.metric(group_name, "Backlog", "default") == [1.0]
    assert moto.metric(group_name, "Backlog", "low") == [0.0]
    assert moto.metric(group_name, "BacklogTotal") == [4.0]
    assert moto.metric(group_name, "BacklogPerInstance") == [2.0]
    listed = moto.cloudwatch.list_metrics(
        Namespace=DEFAULT_CLOUDWATCH_NAMESPACE,
        Dimensions=[{"Name": "AutoScalingGroupName", "Value": group_name}],
    )["Metrics"]
    assert sorted(m["MetricName"] for m in listed) == ["Backlog"] * 3 + ["BacklogPerInstance", "BacklogTotal"]


def test_zero_instances_with_jobs_waiting_publishes_the_total_per_instance(
    moto: Moto, redis: Redis, group_name: str
) -> None:
    # Given a group scaled to zero and 3 jobs waiting
    moto.group(group_name, 0)
    enqueue(redis, "low", 3)
    publisher = BacklogPublisher(
        redis,
        FleetIdentity(None, REGION, group_name),
        autoscaling=moto.autoscaling,
        cloudwatch=moto.cloudwatch,
    )

    # When it publishes, Then BacklogPerInstance is the total, as if there were one instance
    backlog = publisher.publish_once()
    assert backlog is not None and backlog.in_service == 0
    assert moto.metric(group_name, "BacklogPerInstance") == [3.0]
    assert moto.metric(group_name, "BacklogTotal") == [3.0]


def test_one_lease_holder_among_many_and_takeover_on_stop_and_on_death(
    moto: Moto, redis_url: str, group_name: str, stoppers: list[Callable[[], None]]
) -> None:
    moto.group(group_name, 1)
    identity = FleetIdentity(None, REGION, group_name)
    ttl = 5.0  # seconds, not a fraction: a loaded machine's late tick must not lose the lease

    def publisher(name: str, interval: float = 0.1) -> BacklogPublisher:
        p = BacklogPublisher(
            Redis.from_url(redis_url),  # its own connection, as on another instance
            identity,
            interval_s=interval,
            lease_ttl_s=ttl,
            owner=name,
            autoscaling=moto.autoscaling,
            cloudwatch=moto.cloudwatch,
        )
        stoppers.append(p.stop)
        return p

    # Given four workers' publishers running
    fleet = [publisher(f"w{n}").start() for n in range(4)]
    wait_until(lambda: sum(p.published for p in fleet) >= 3, 30, "three publications")

    # Then exactly one of them publishes, and it is the one whose token is in the lease
    (holder,) = [p for p in fleet if p.published]
    assert redis_token(redis_url, group_name) == holder.token
    assert [p.holding for p in fleet].count(True) == 1

    # When the holder stops, it gives the lease up at once (deleted, not left to expire), and another
    # takes over at its next tick
    holder.stop()
    assert redis_token(redis_url, group_name) != holder.token
    rest = [p for p in fleet if p is not holder]
    wait_until(lambda: any(p.published for p in rest), ttl + 60, "takeover after stop")
    assert [p.holding for p in rest].count(True) == 1

    # When a holder dies without a word (here: one that took the lease and never ticks again)
    for p in rest:
        p.stop()
    dead = publisher("dead")
    assert dead.publish_once() is not None
    died_at = time.monotonic()
    survivor = publisher("survivor", interval=0.05).start()

    # Then nobody publishes while its lease lives, and the survivor does once it has expired
    took = wait_until(lambda: survivor.published > 0, ttl + 60, "takeover after death")
    waited = time.monotonic() - died_at
    assert waited >= ttl - 0.1, (took, waited)
    assert redis_token(redis_url, group_name) == survivor.token


def redis_token(redis_url: str, group: str) -> str | None:
    with Redis.from_url(redis_url, decode_responses=True) as client:
        value = client.get(LEASE_PREFIX + group)
        return str(value) if value is not None else None


def test_publisher_outages_are_logged_once_and_recovered(
    moto: Moto, redis: Redis, group_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    for name in FLEET_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
    moto.group(group_name, 1)
    # Given CloudWatch unreachable (nothing listens there)
    (port,) = free_ports(1)
    dead = aws_client("cloudwatch", REGION, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)
    publisher = BacklogPublisher(
        redis, FleetIdentity(None, REGION, group_name), autoscaling=moto.autoscaling, cloudwatch=dead
    )

    # When it ticks three times, Then no exception, one warning
    assert [publisher.publish_once() for _ in range(3)] == [None, None, None]
    assert len(fleet_logs(caplog, logging.WARNING)) == 1

    # When CloudWatch answers again, Then it publishes and says so once
    publisher.cloudwatch = moto.cloudwatch
    assert publisher.publish_once() is not None
    assert any("works again" in m for m in fleet_logs(caplog, logging.INFO))

    # And a Redis it cannot reach is the same: one warning, no exception
    caplog.clear()
    unreachable = Redis(port=port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    cut_off = BacklogPublisher(unreachable, FleetIdentity(None, REGION, group_name + "-b"))
    assert cut_off.publish_once() is None and cut_off.publish_once() is None
    assert len(fleet_logs(caplog, logging.WARNING)) == 1


# -- scale-in protection ---------------------------------------------------------------------------------


def protection(
    redis_url: str, identity: FleetIdentity, worker: str, moto: Moto, **kw: Any
) -> ScaleInProtection:
    """A worker's protection; without a grace after idle() unless the test asks for one."""
    kw.setdefault("idle_grace_s", 0.0)
    return ScaleInProtection(
        Redis.from_url(redis_url), identity, worker_name=worker, autoscaling=moto.autoscaling, **kw
    )


def test_instance_protected_while_any_of_its_workers_is_busy(
    moto: Moto, redis_url: str, group_name: str
) -> None:
    (instance,) = moto.group(group_name, 1)
    identity = FleetIdentity(instance, REGION, group_name)
    gpu0, gpu1 = (protection(redis_url, identity, f"gpu{n}", moto) for n in range(2))
    assert not moto.protected(instance)

    gpu0.busy()
    assert moto.protected(instance)
    gpu1.busy()
    gpu0.idle()
    assert moto.protected(instance), "gpu1 still runs a job"
    gpu1.idle()
    assert not moto.protected(instance)
    # Two changes, two calls between the two workers: none when the protection already matched.
    assert gpu0.calls + gpu1.calls == 2


def test_back_to_back_jobs_keep_the_protection_through_the_idle_grace(
    moto: Moto, redis_url: str, group_name: str, stoppers: list[Callable[[], None]]
) -> None:
    (instance,) = moto.group(group_name, 1)
    worker = protection(
        redis_url, FleetIdentity(instance, REGION, group_name), "gpu0", moto, idle_grace_s=2.0
    )
    stoppers.append(worker.start().stop)
    wait_until(lambda: worker.calls == 1, 30, "the start-up reconcile")  # a new instance: unprotected

    # Given a job ending and the next one starting at once
    worker.busy()
    worker.idle()
    worker.busy()
    # Then one call: the protection never dropped in between
    assert moto.protected(instance) and worker.calls == 2

    # When the last job ends, Then the protection stays for the grace and goes after it
    idle_at = time.monotonic()
    worker.idle()
    assert moto.protected(instance)
    wait_until(lambda: not moto.protected(instance), 60, "protection dropped after the grace")
    assert time.monotonic() - idle_at >= 2.0  # not before the grace was over
    assert worker.calls == 3


def test_a_crashed_busy_workers_entry_expires(
    moto: Moto, redis_url: str, group_name: str, stoppers: list[Callable[[], None]]
) -> None:
    (instance,) = moto.group(group_name, 1)
    identity = FleetIdentity(instance, REGION, group_name)
    # Given a worker that went busy and then died (no idle(), no refresh thread)
    crashed = protection(redis_url, identity, "gpu0", moto, ttl_s=3.0)
    busy_at = time.monotonic()
    crashed.busy()
    assert moto.protected(instance)

    # When another worker of the instance runs its refresh thread
    survivor = protection(redis_url, identity, "gpu1", moto, ttl_s=3.0).start()
    stoppers.append(survivor.stop)

    # Then the protection goes once the dead worker's entry has expired
    wait_until(lambda: not moto.protected(instance), 60, "protection dropped")
    assert time.monotonic() - busy_at >= 3.0  # not before the dead worker's entry expired


def test_busy_worker_refreshes_its_entry_beyond_the_ttl(
    moto: Moto, redis_url: str, group_name: str, stoppers: list[Callable[[], None]]
) -> None:
    (instance,) = moto.group(group_name, 1)
    identity = FleetIdentity(instance, REGION, group_name)
    worker = protection(redis_url, identity, "gpu0", moto, ttl_s=5.0).start()
    stoppers.append(worker.stop)
    worker.busy()
    redis = Redis.from_url(redis_url)
    first_expiry_ms = redis.zscore(worker.busy_key, "gpu0")
    assert first_expiry_ms is not None
    # When the entry's first ttl has passed (waited on the clock the expiry is written in)
    wait_until(lambda: time.time() * 1000 > first_expiry_ms + 500, 30, "first ttl passed")
    # Then it is alive because refreshed: its expiry moved past now, and the instance is protected
    assert (redis.zscore(worker.busy_key, "gpu0") or 0) > time.time() * 1000
    assert worker.reconcile() is True and moto.protected(instance)
    worker.stop()  # a stopping worker's job was requeued: it leaves as idle
    assert not moto.protected(instance)


def test_aws_unreachable_is_logged_never_raised_and_retried(
    moto: Moto, redis_url: str, group_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    for name in FLEET_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
    (instance,) = moto.group(group_name, 1)
    (port,) = free_ports(1)
    worker = protection(redis_url, FleetIdentity(instance, REGION, group_name), "gpu0", moto)
    worker.autoscaling = aws_client(
        "autoscaling", REGION, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout_s=0.5
    )

    worker.busy()
    worker.busy()
    assert len(fleet_logs(caplog, logging.WARNING)) == 1
    assert not moto.protected(instance)

    # The next call after AWS is back sets what is wanted now.
    worker.autoscaling = moto.autoscaling
    worker.busy()
    assert moto.protected(instance)
    assert any("works again" in m for m in fleet_logs(caplog, logging.INFO))


# -- identity --------------------------------------------------------------------------------------------


def test_identity_from_imds_drives_protection(
    imds: FakeIMDS, moto: Moto, redis_url: str, group_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    for name in FLEET_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
    (instance,) = moto.group(group_name, 1)
    # Given an instance whose metadata serves its id, region and group tag (InstanceMetadataTags=enabled)
    imds.serve(META_PREFIX + INSTANCE_ID_PATH, instance)
    imds.serve(META_PREFIX + REGION_PATH, REGION)
    imds.serve(META_PREFIX + GROUP_TAG_PATH, group_name)

    identity = FleetIdentity.discover(MetadataClient(imds.url, timeout_s=0.5))

    assert identity == FleetIdentity(instance, REGION, group_name)
    assert identity.off_reason is None
    assert len(fleet_logs(caplog, logging.INFO)) == 1
    protection(redis_url, identity, "gpu0", moto).busy()
    assert moto.protected(instance)


def test_identity_overrides_and_missing_group_tag(imds: FakeIMDS, caplog: pytest.LogCaptureFixture) -> None:
    for name in FLEET_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
    client = MetadataClient(imds.url, timeout_s=0.5)
    # Tags not enabled: the tag path is 404, so no group is known and both features are off
    no_tag = FleetIdentity.discover(client)
    assert no_tag.instance_id == imds.instance_id and no_tag.asg_name is None
    assert no_tag.off_reason and "AUTOSCALING_GROUP" in no_tag.off_reason
    # AWS_REGION (maybe the bucket's) only fills in what IMDS does not say
    assert FleetIdentity.discover(client, default_region="eu-west-1").region == "eu-west-1"
    imds.serve(META_PREFIX + REGION_PATH, REGION)
    assert FleetIdentity.discover(client, default_region="eu-west-1").region == REGION
    # Explicit settings win over what IMDS says
    imds.serve(META_PREFIX + GROUP_TAG_PATH, "from-tag")
    explicit = FleetIdentity.discover(client, asg_name="from-setting", region="eu-west-1")
    assert (explicit.asg_name, explicit.region, explicit.instance_id) == (
        "from-setting",
        "eu-west-1",
        imds.instance_id,
    )


def test_off_ec2_both_features_off_with_one_info_line(
    no_imds_url: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    for name in FLEET_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    identity = FleetIdentity.discover(MetadataClient(no_imds_url, timeout_s=0.5))
    assert (identity.instance_id, identity.asg_name) == (None, None)

    publisher = BacklogPublisher(redis, identity).start()
    guard = ScaleInProtection(redis, identity, worker_name="gpu0").start()
    guard.busy()
    guard.idle()
    assert publisher.publish_once() is None and not publisher.is_alive()
    publisher.stop()
    guard.stop()

    infos = fleet_logs(caplog, logging.INFO)
    assert len(infos) == 1 and "not on EC2" in infos[0], infos
    assert not fleet_logs(caplog, logging.WARNING)
    assert redis.keys("daemon:fleet:*") == []


def test_off_ec2_with_an_explicit_group_still_publishes(no_imds_url: str) -> None:
    # A host outside the group (always on) can publish its backlog: what scaling out from zero needs.
    identity = FleetIdentity.discover(
        MetadataClient(no_imds_url, timeout_s=0.5), asg_name="render-fleet", region=REGION
    )
    assert identity.asg_name == "render-fleet" and identity.instance_id is None
    assert BacklogPublisher(Redis(), identity).enabled
    assert not ScaleInProtection(Redis(), identity, worker_name="w").enabled


def test_many_threads_one_lease(redis_url: str) -> None:
    # The lease alone, raced from many threads at once: one SET NX wins, the others see it held.
    identity = FleetIdentity(None, REGION, "race-group")
    publishers = [BacklogPublisher(Redis.from_url(redis_url), identity, lease_ttl_s=5) for _ in range(16)]
    barrier = threading.Barrier(len(publishers))
    results: list[bool] = []

    def race(p: BacklogPublisher) -> None:
        barrier.wait()
        results.append(p._hold_lease())

    threads = [threading.Thread(target=race, args=(p,)) for p in publishers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
