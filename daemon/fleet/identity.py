"""Who this instance is in the fleet (DESIGN §8), and what the backlog publisher (`backlog.py`) and
scale-in protection (`protection.py`) share.

`FleetIdentity`: this instance's id, region and Auto Scaling group, read once from IMDS (the group from
the instance tag `aws:autoscaling:groupName`, which IMDS serves only when the launch template sets
`InstanceMetadataTags=enabled`), each overridable by a setting.

Failures never reach the worker: they are logged once per outage (`Outage`) and the next tick or call
tries again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .imds import MetadataClient, MetadataUnavailable

log = logging.getLogger(__name__)

INSTANCE_ID_PATH = "instance-id"
REGION_PATH = "placement/region"
GROUP_TAG_PATH = "tags/instance/aws:autoscaling:groupName"
"""Auto Scaling tags its instances with their group; IMDS serves tags only with
InstanceMetadataTags=enabled in the launch template's metadata options."""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Compare-and-delete (KEYS[1], token): frees a lease or lock only while the caller still holds it."""


class Outage:
    """One warning when a dependency starts failing, one info line when it answers again."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None  # time.monotonic()

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s failed, retrying every tick: %s", self.what, exc)
        else:
            log.debug("%s still failing: %s", self.what, exc)

    def ok(self) -> None:
        if self.since is not None:
            log.info("%s works again after %.0f s", self.what, time.monotonic() - self.since)
            self.since = None


@dataclass(frozen=True)
class FleetIdentity:
    """Who this worker is in the fleet. `off_reason` says why the features are off when discovery
    already logged it (so they don't repeat it)."""

    instance_id: str | None = None
    region: str | None = None
    asg_name: str | None = None
    off_reason: str | None = field(default=None, compare=False)

    @classmethod
    def discover(
        cls,
        metadata: MetadataClient | None,
        *,
        asg_name: str | None = None,
        region: str | None = None,
        instance_id: str | None = None,
        default_region: str | None = None,
    ) -> FleetIdentity:
        """Read what IMDS knows; explicit values win, `default_region` (AWS_REGION, which may be the
        bucket's) only fills in when IMDS does not say. Logs one info line. Never raises.

        Off EC2 (no IMDS, or `metadata` None) only explicit values are used: with AUTOSCALING_GROUP set
        the backlog is still published (a host outside the group can publish it, which is what lets
        the group scale out from zero); scale-in protection needs an instance, so it is off."""
        found: dict[str, str | None] = {"instance_id": None, "region": None, "asg_name": None}
        off_ec2: str | None = None
        if metadata is None:
            off_ec2 = "IMDS_URL is empty"
        else:
            try:
                found["instance_id"] = metadata.get(INSTANCE_ID_PATH)
                found["region"] = metadata.get(REGION_PATH)
                found["asg_name"] = metadata.get(GROUP_TAG_PATH)
            except MetadataUnavailable as exc:
                if found["instance_id"] is None:
                    off_ec2 = f"no instance metadata at {metadata.base_url}: {exc}"
                else:
                    log.warning("instance metadata incomplete (%s): using what was read", exc)
            except Exception as exc:  # a bug must not stop the worker from starting
                log.exception("instance metadata unreadable")
                off_ec2 = f"instance metadata unreadable: {exc}"
            if off_ec2 is None and not _clean(found["instance_id"]):
                off_ec2 = f"{metadata.base_url} serves no instance-id"
        identity = cls(
            instance_id=instance_id or _clean(found["instance_id"]),
            region=region or _clean(found["region"]) or default_region,
            asg_name=asg_name or _clean(found["asg_name"]),
        )
        reason = identity._describe(off_ec2)
        log.info("fleet: %s", reason)
        return identity if identity.asg_name and identity.instance_id else _with_reason(identity, reason)

    def _describe(self, off_ec2: str | None) -> str:
        if off_ec2 and not self.asg_name:
            return f"not on EC2 ({off_ec2}): backlog metrics and scale-in protection off"
        if off_ec2:
            return (
                f"not on EC2 ({off_ec2}): scale-in protection off; backlog of group {self.asg_name} "
                f"published (AUTOSCALING_GROUP set)"
            )
        if not self.asg_name:
            return (
                f"instance {self.instance_id} is in no Auto Scaling group we know of (no instance tag "
                f"aws:autoscaling:groupName: InstanceMetadataTags disabled? or set AUTOSCALING_GROUP): "
                f"backlog metrics and scale-in protection off"
            )
        return f"instance {self.instance_id} in group {self.asg_name}, region {self.region or 'from boto3'}"


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip() or None


def _with_reason(identity: FleetIdentity, reason: str) -> FleetIdentity:
    return FleetIdentity(identity.instance_id, identity.region, identity.asg_name, off_reason=reason)


def log_off(identity: FleetIdentity, message: str) -> None:
    """Say a feature is off: at debug when discovery already said why, else (a hand-made identity) info."""
    log.log(logging.DEBUG if identity.off_reason else logging.INFO, message)
