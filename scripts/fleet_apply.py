"""Create or update the GPU fleet from the documents in ops/launch-template/ (boto3; no AWS CLI needed).

Each JSON file there is the `--cli-input-json` of one AWS CLI call, kept as it is; this script fills its
`@@NAME@@` placeholders, puts the rendered user data (base64) into the launch template, then calls:

  1. `--iam` only: the role and instance profile `capture-daemon` with instance-policy.json
  2. the launch template: created, or a new version that becomes the default (the group uses `$Default`)
  3. the Auto Scaling group: created, or updated (its desired capacity is left to the scaling policy)
  4. the terminating lifecycle hook and the target-tracking scaling policy (put = create or replace)
  5. `--refresh` only: an instance refresh, which rolls the new version out to running instances

A placeholder inside a string takes the value as text (lists joined with commas); a placeholder that is a
whole list item takes a list value item by item. `--dry-run` prints the rendered documents (`--out DIR`
also writes them, for `aws … --cli-input-json file://DIR/NAME.json`); `--endpoint-url` sends every call
to another endpoint (the tests use moto's server).

    python scripts/fleet_apply.py --region us-east-1 --subnets subnet-a,subnet-b --security-groups sg-1 \\
        --release-url s3://my-bucket/releases/capture-daemon-2025.06.01.tar.gz [--iam --bucket my-bucket]
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPS_DIR = Path(__file__).resolve().parent.parent / "ops" / "launch-template"
"""Where the documents live; the script never edits them."""

DEFAULT_AMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)
"""Public SSM parameter: the latest Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04): NVIDIA
driver, CUDA toolkits under /usr/local/cuda-*, AWS CLI. Resolved at apply time, so each launch template
version pins one AMI and a new AMI arrives only with a deliberate apply + refresh."""

DEFAULT_SSM_PATH = "/capture-daemon/prod"
"""Parameter Store path whose parameters become /etc/capture-daemon/daemon.env on each instance."""

USER_DATA_MAX_BYTES = 16 * 1024
"""EC2 refuses user data above 16 KB (before base64)."""

DOCUMENTS: dict[str, tuple[str, str, str]] = {
    "launch-template": ("launch-template.json", "ec2", "CreateLaunchTemplate"),
    "asg": ("asg.json", "autoscaling", "CreateAutoScalingGroup"),
    "lifecycle-hook": ("lifecycle-hook.json", "autoscaling", "PutLifecycleHook"),
    "scaling-policy": ("scaling-policy.json", "autoscaling", "PutScalingPolicy"),
    "instance-refresh": ("instance-refresh.json", "autoscaling", "StartInstanceRefresh"),
}
"""Call inputs: name → (file, service, operation whose input the file is)."""

IAM_DOCUMENTS: dict[str, str] = {
    "instance-policy": "instance-policy.json",
    "instance-trust-policy": "instance-trust-policy.json",
}
"""IAM policy documents (rendered when --bucket is given, applied with --iam)."""

USER_DATA_FILE = "user-data.sh"
PLACEHOLDER = re.compile(r"@@([A-Z][A-Z0-9_]*)@@")
SHELL_SAFE = re.compile(r"[A-Za-z0-9._~:/@%+=,-]*")
"""Values that go into user-data.sh sit in single quotes: no quotes, spaces or `$` allowed."""

_ID_PATTERNS = {
    "subnet": re.compile(r"subnet-[0-9a-f]{8,17}"),
    "security group": re.compile(r"sg-[0-9a-f]{8,17}"),
    "image": re.compile(r"ami-[0-9a-f]{8,17}|resolve:ssm:/[A-Za-z0-9_./-]+"),
    "SSM path": re.compile(r"(/[A-Za-z0-9_.-]+)+"),
    "bucket": re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"),
}


class FleetError(Exception):
    """A bad input or a document that cannot be rendered; the message says which."""


@dataclass(frozen=True)
class Inputs:
    """Everything the placeholders need, checked once."""

    image_id: str
    subnet_ids: tuple[str, ...]
    security_group_ids: tuple[str, ...]
    release_url: str
    release_ref: str = ""
    ssm_path: str = DEFAULT_SSM_PATH
    bucket: str | None = None
    # The instance role's S3 scope: inputs read-only, outputs and checkpoints read-write, nothing else.
    input_prefixes: tuple[str, ...] = ("uploads/",)
    output_prefixes: tuple[str, ...] = ("jobs/",)
    checkpoint_prefix: str = "checkpoints/"

    def __post_init__(self) -> None:
        _check("image", self.image_id)
        _check("SSM path", self.ssm_path)
        for subnet in self.subnet_ids or ("",):
            _check("subnet", subnet)
        for group in self.security_group_ids or ("",):
            _check("security group", group)
        if self.bucket is not None:
            _check("bucket", self.bucket)
        for prefix in (*self.input_prefixes, *self.output_prefixes, self.checkpoint_prefix):
            if not PREFIX.fullmatch(prefix):
                raise FleetError(f"S3 prefix {prefix!r}: letters, digits, ._-/, ending in '/' (not the root)")
        writable = (*self.output_prefixes, self.checkpoint_prefix)
        if set(self.input_prefixes) & set(writable):
            raise FleetError(
                "an input prefix cannot be an output or checkpoint prefix too: inputs are read-only"
            )
        for name, value in (("release URL", self.release_url), ("release ref", self.release_ref)):
            if not SHELL_SAFE.fullmatch(value):
                raise FleetError(f"{name} {value!r}: only letters, digits and ._~:/@%+=,- are allowed")
        if not self.release_url:
            raise FleetError("a release URL is required")
        if self.release_url.startswith("s3://"):
            key = self.release_url[5:].partition("/")[2]
            if not key.startswith("releases/"):
                raise FleetError(f"{self.release_url}: S3 releases live under releases/ (the policy's scope)")
        elif not _is_tarball_url(self.release_url) and not self.release_ref:
            raise FleetError(f"{self.release_url}: a git repository URL needs --release-ref")

    def values(self) -> dict[str, str | list[str]]:
        description = f"{self.release_url} {self.release_ref}".strip() + f" on {self.image_id}"
        values: dict[str, str | list[str]] = {
            "IMAGE_ID": self.image_id,
            "SUBNET_IDS": list(self.subnet_ids),
            "SECURITY_GROUP_IDS": list(self.security_group_ids),
            "RELEASE_URL": self.release_url,
            "RELEASE_REF": self.release_ref,
            "SSM_PATH": self.ssm_path,
            "VERSION_DESCRIPTION": description[:255],
        }
        if self.bucket:
            values["S3_BUCKET"] = self.bucket
            # Releases are read from the release URL's bucket (S3_BUCKET when the release is not in S3).
            values["RELEASE_BUCKET"] = _s3_bucket_of(self.release_url) or self.bucket
            arn = f"arn:aws:s3:::{self.bucket}/"
            writable = [*self.output_prefixes, self.checkpoint_prefix]
            values["INPUT_OBJECTS"] = [f"{arn}{prefix}*" for prefix in self.input_prefixes]
            values["WRITABLE_OBJECTS"] = [f"{arn}{prefix}*" for prefix in writable]
            values["WRITABLE_PREFIXES"] = [f"{prefix}*" for prefix in writable]
        return values


PREFIX = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._/-]*/")
"""An S3 key prefix the instance role is scoped to: a folder, never the whole bucket."""


def _check(kind: str, value: str) -> None:
    if not _ID_PATTERNS[kind].fullmatch(value):
        raise FleetError(f"{kind} {value!r} does not look like one")


def _is_tarball_url(url: str) -> bool:
    return url.startswith("https://") and url.endswith((".tar.gz", ".tgz"))


def _s3_bucket_of(url: str) -> str | None:
    return url[5:].partition("/")[0] if url.startswith("s3://") else None


# --- Rendering ------------------------------------------------------------------------------------------


def fill(node: Any, values: Mapping[str, str | list[str]], missing: set[str] | None = None) -> Any:
    """`node` with every `@@NAME@@` replaced (see the module docstring); unknown names go to `missing`."""
    missing = set() if missing is None else missing

    def text(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        if value is None:
            missing.add(match.group(1))
            return match.group(0)
        return ",".join(value) if isinstance(value, list) else value

    if isinstance(node, dict):
        return {key: fill(item, values, missing) for key, item in node.items()}
    if isinstance(node, list):
        out: list[Any] = []
        for item in node:
            whole = PLACEHOLDER.fullmatch(item) if isinstance(item, str) else None
            if whole and isinstance(values.get(whole.group(1)), list):
                out.extend(values[whole.group(1)])
            else:
                out.append(fill(item, values, missing))
        return out
    if isinstance(node, str):
        return PLACEHOLDER.sub(text, node)
    return node


def render_user_data(inputs: Inputs, ops_dir: Path = OPS_DIR) -> str:
    """user-data.sh with its variables filled in (all shell-safe, checked by `Inputs`)."""
    missing: set[str] = set()
    script = fill((ops_dir / USER_DATA_FILE).read_text(), inputs.values(), missing)
    if missing:
        raise FleetError(f"{USER_DATA_FILE}: no value for {', '.join(sorted(missing))}")
    if len(script.encode()) > USER_DATA_MAX_BYTES:
        raise FleetError(f"{USER_DATA_FILE} renders to {len(script.encode())} bytes; EC2 allows 16 KB")
    return script


def render(inputs: Inputs, ops_dir: Path = OPS_DIR) -> dict[str, Any]:
    """Every document with its placeholders filled: name → the call input (or policy document)."""
    values: dict[str, str | list[str]] = dict(inputs.values())
    values["USER_DATA"] = base64.b64encode(render_user_data(inputs, ops_dir).encode()).decode()
    files = {name: spec[0] for name, spec in DOCUMENTS.items()}
    if inputs.bucket:
        files.update(IAM_DOCUMENTS)
    rendered: dict[str, Any] = {}
    for name, filename in files.items():
        missing: set[str] = set()
        rendered[name] = fill(json.loads((ops_dir / filename).read_text()), values, missing)
        if missing:
            raise FleetError(f"{filename}: no value for {', '.join(sorted(missing))}")
    return rendered


# --- Applying -------------------------------------------------------------------------------------------


def input_members(client: Any, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `params` that `operation` accepts (e.g. a create input reused for an update)."""
    members = client.meta.service_model.operation_model(operation).input_shape.members
    return {key: value for key, value in params.items() if key in members}


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def ensure_instance_profile(iam: Any, docs: Mapping[str, Any], log: Callable[[str], None]) -> None:
    """Role + inline policy + instance profile, all named as the launch template's instance profile."""
    name = docs["launch-template"]["LaunchTemplateData"]["IamInstanceProfile"]["Name"]
    trust = json.dumps(docs["instance-trust-policy"])
    try:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust, Description="capture-daemon workers")
        log(f"iam role {name}: created")
    except iam.exceptions.EntityAlreadyExistsException:
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=trust)
    iam.put_role_policy(RoleName=name, PolicyName=name, PolicyDocument=json.dumps(docs["instance-policy"]))
    log(f"iam role {name}: inline policy {name} put")
    try:
        iam.create_instance_profile(InstanceProfileName=name)
        log(f"iam instance profile {name}: created")
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
    if not any(role["RoleName"] == name for role in roles):
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)


def ensure_launch_template(ec2: Any, doc: Mapping[str, Any], log: Callable[[str], None]) -> int:
    """Create the template, or add a version and make it the default; returns the default version."""
    name = doc["LaunchTemplateName"]
    try:
        found = ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
    except Exception as exc:
        if _error_code(exc) != "InvalidLaunchTemplateName.NotFoundException":
            raise
        found = []
    if not found:
        created = ec2.create_launch_template(**doc)["LaunchTemplate"]
        log(f"launch template {name}: created ({created['LaunchTemplateId']}), version 1")
        return 1
    params = input_members(ec2, "CreateLaunchTemplateVersion", doc)
    version = ec2.create_launch_template_version(**params)["LaunchTemplateVersion"]["VersionNumber"]
    ec2.modify_launch_template(LaunchTemplateName=name, DefaultVersion=str(version))
    log(f"launch template {name}: version {version} is the default")
    return int(version)


def ensure_group(autoscaling: Any, doc: Mapping[str, Any], log: Callable[[str], None]) -> None:
    """Create the group, or update it in place without touching its current desired capacity."""
    name = doc["AutoScalingGroupName"]
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    if not groups:
        autoscaling.create_auto_scaling_group(**doc)
        log(f"auto scaling group {name}: created")
        return
    params = input_members(autoscaling, "UpdateAutoScalingGroup", doc)
    params.pop("DesiredCapacity", None)  # the scaling policy owns it; resetting it would kill workers
    autoscaling.update_auto_scaling_group(**params)
    tags = [{**tag, "ResourceId": name, "ResourceType": "auto-scaling-group"} for tag in doc.get("Tags", [])]
    if tags:
        autoscaling.create_or_update_tags(Tags=tags)
    log(f"auto scaling group {name}: updated")


def apply(
    docs: Mapping[str, Any],
    client: Callable[[str], Any],
    *,
    iam: bool,
    refresh: bool,
    log: Callable[[str], None],
) -> None:
    """Make the calls, in dependency order; every step is safe to repeat."""
    if iam:
        ensure_instance_profile(client("iam"), docs, log)
    ensure_launch_template(client("ec2"), docs["launch-template"], log)
    autoscaling = client("autoscaling")
    ensure_group(autoscaling, docs["asg"], log)
    autoscaling.put_lifecycle_hook(**docs["lifecycle-hook"])
    log(f"lifecycle hook {docs['lifecycle-hook']['LifecycleHookName']}: put")
    autoscaling.put_scaling_policy(**docs["scaling-policy"])
    log(f"scaling policy {docs['scaling-policy']['PolicyName']}: put")
    if refresh:
        refresh_id = autoscaling.start_instance_refresh(**docs["instance-refresh"])["InstanceRefreshId"]
        log(f"instance refresh {refresh_id}: started")


# --- Command line ---------------------------------------------------------------------------------------


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--region", required=True)
    add("--subnets", required=True, type=_csv, help="subnet ids, comma-separated")
    add("--security-groups", required=True, type=_csv, help="security group ids, comma-separated")
    add("--release-url", required=True, help="s3://…/releases/X.tar.gz, https://…/X.tar.gz or a git URL")
    add("--release-ref", default="", help="branch, tag or commit (git URLs only)")
    add(
        "--image-id",
        help="AMI id, or resolve:ssm:NAME (EC2 resolves it at each launch); default: --ami-parameter, now",
    )
    add("--ami-parameter", default=DEFAULT_AMI_PARAMETER, help="SSM parameter holding an AMI id")
    add("--ssm-path", default=DEFAULT_SSM_PATH, help="Parameter Store path of the daemon's environment")
    add("--bucket", help="the daemon's S3_BUCKET (renders instance-policy.json)")
    add("--input-prefixes", type=_csv, default=("uploads/",), help="read-only input prefixes (uploads/)")
    add("--output-prefixes", type=_csv, default=("jobs/",), help="S3_PREFIX and any output.s3_prefix roots")
    add("--checkpoint-prefix", default="checkpoints/", help="CHECKPOINT_PREFIX, with its slash")
    add("--iam", action="store_true", help="also create/update the IAM role and instance profile")
    add("--refresh", action="store_true", help="start an instance refresh after applying")
    add("--dry-run", action="store_true", help="print the rendered documents; change nothing")
    add("--out", type=Path, help="also write the rendered documents (and user data) into this folder")
    add("--endpoint-url", help="send every AWS call here (tests: moto)")
    args = parser.parse_args(argv)
    if args.iam and not args.bucket:
        parser.error("--iam needs --bucket (the instance policy names it)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import boto3  # here, so that --help works without it

    session = boto3.session.Session(region_name=args.region)

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=args.endpoint_url)

    def log(line: str) -> None:
        print(f"fleet_apply: {line}", file=sys.stderr)

    try:
        image_id = args.image_id
        if not image_id:
            image_id = client("ssm").get_parameter(Name=args.ami_parameter)["Parameter"]["Value"]
            log(f"image {image_id} (from {args.ami_parameter})")
        inputs = Inputs(
            image_id=image_id,
            subnet_ids=args.subnets,
            security_group_ids=args.security_groups,
            release_url=args.release_url,
            release_ref=args.release_ref,
            ssm_path=args.ssm_path,
            bucket=args.bucket,
            input_prefixes=args.input_prefixes,
            output_prefixes=args.output_prefixes,
            checkpoint_prefix=args.checkpoint_prefix,
        )
        docs = render(inputs)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            for name, doc in docs.items():
                (args.out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
            (args.out / USER_DATA_FILE).write_text(render_user_data(inputs))
            log(f"rendered documents written to {args.out}/")
        if args.dry_run:
            print(json.dumps(docs, indent=2))
            return 0
        apply(docs, client, iam=args.iam, refresh=args.refresh, log=log)
    except FleetError as exc:
        log(f"error: {exc}")
        return 2
    except Exception as exc:  # botocore errors: one line an operator can act on
        if not _error_code(exc) and type(exc).__module__.split(".")[0] not in ("botocore", "boto3"):
            raise
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
