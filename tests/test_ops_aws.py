"""The fleet's AWS documents (ops/launch-template/) and scripts/fleet_apply.py that applies them.

Each JSON document is checked against botocore's own model of the call it feeds (members, types, required
fields, enums, ranges), then the script runs for real against the session's moto server (EC2, Auto
Scaling, IAM, SSM and CloudWatch are there too) and the result is read back; the AWS CLI, when installed,
takes the rendered files as they are. The shell scripts pass `bash -n` and shellcheck, the user data
installs the units that ops/systemd/ provides, and the lifecycle watcher drains and completes the hook
against the fake metadata service.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.validate import ParamValidator

from tests.servers.aws_front import AwsFront
from tests.servers.s3 import MotoS3Server

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops" / "launch-template"
SYSTEMD = ROOT / "ops" / "systemd"
SCRIPT = ROOT / "scripts" / "fleet_apply.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("fleet_apply", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleet_apply"] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


fleet_apply = _load_script()

SAMPLE = fleet_apply.Inputs(
    image_id="ami-0123456789abcdef0",
    subnet_ids=("subnet-0123456789abcdef0", "subnet-0123456789abcdef1"),
    security_group_ids=("sg-0123456789abcdef0",),
    release_url="s3://capture-outputs/releases/capture-daemon-1.0.0.tar.gz",
    bucket="capture-outputs",
)
IMDS_TAG_KEY = re.compile(r"[A-Za-z0-9+\-=._:@,]+")
"""Tag keys an instance with tags in its metadata accepts (no spaces, no `/`): others fail the launch."""


@pytest.fixture(scope="module")
def docs() -> dict[str, Any]:
    return fleet_apply.render(SAMPLE)


@functools.cache
def _model(service: str) -> Any:
    return botocore.session.get_session().get_service_model(service)


def _model_errors(value: Any, shape: Any, path: str = "") -> list[str]:
    """What ParamValidator leaves out: enum values and maximum lengths and ranges."""
    errors: list[str] = []
    if shape.type_name == "structure":
        for key, item in value.items():
            errors += _model_errors(item, shape.members[key], f"{path}.{key}")
    elif shape.type_name == "list":
        for index, item in enumerate(value):
            errors += _model_errors(item, shape.member, f"{path}[{index}]")
    elif shape.type_name == "string":
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: {value!r} is not one of {shape.enum}")
        if "max" in shape.metadata and len(value) > shape.metadata["max"]:
            errors.append(f"{path}: longer than {shape.metadata['max']}")
    elif shape.type_name in ("integer", "long", "double"):
        low, high = shape.metadata.get("min", value), shape.metadata.get("max", value)
        if not low <= value <= high:
            errors.append(f"{path}: {value} outside [{low}, {high}]")
    return errors


def _assert_valid_input(service: str, operation: str, params: dict[str, Any]) -> None:
    shape = _model(service).operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), f"{operation}: {report.generate_report()}"
    assert not _model_errors(params, shape), f"{operation}: {_model_errors(params, shape)}"


# --- The documents against botocore's models -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(fleet_apply.DOCUMENTS))
def test_each_document_is_a_valid_input_of_its_call(docs: dict[str, Any], name: str) -> None:
    # Given a document rendered with sample values, when botocore validates it for its operation,
    # then nothing is reported.
    _, service, operation = fleet_apply.DOCUMENTS[name]
    _assert_valid_input(service, operation, docs[name])


def test_update_calls_accept_what_the_script_takes_from_the_create_documents(docs: dict[str, Any]) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    scaling = boto3.client(
        "autoscaling", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    version = fleet_apply.input_members(ec2, "CreateLaunchTemplateVersion", docs["launch-template"])
    update = fleet_apply.input_members(scaling, "UpdateAutoScalingGroup", docs["asg"])
    _assert_valid_input("ec2", "CreateLaunchTemplateVersion", version)
    _assert_valid_input("autoscaling", "UpdateAutoScalingGroup", update)
    assert version["LaunchTemplateData"] == docs["launch-template"]["LaunchTemplateData"]
    assert set(docs["asg"]) - set(update) == {"Tags"}  # tags go through create_or_update_tags


def test_policy_documents_are_valid_iam_inputs(docs: dict[str, Any]) -> None:
    policy, trust = docs["instance-policy"], docs["instance-trust-policy"]
    _assert_valid_input(
        "iam",
        "PutRolePolicy",
        {"RoleName": "capture-daemon", "PolicyName": "capture-daemon", "PolicyDocument": json.dumps(policy)},
    )
    _assert_valid_input(
        "iam", "CreateRole", {"RoleName": "capture-daemon", "AssumeRolePolicyDocument": json.dumps(trust)}
    )
    assert "@@" not in json.dumps(policy)


def test_every_placeholder_in_the_files_has_a_value() -> None:
    provided = set(SAMPLE.values()) | {"USER_DATA"}
    for path in OPS.iterdir():
        if path.suffix in (".json", ".sh"):
            used = set(fleet_apply.PLACEHOLDER.findall(path.read_text()))
            assert used <= provided, f"{path.name}: {used - provided} unknown to scripts/fleet_apply.py"
        if path.suffix == ".json":
            json.loads(path.read_text())  # what `--cli-input-json file://…` reads


# --- What the documents say ----------------------------------------------------------------------------


def test_launch_template_requires_imdsv2_on_the_host_and_leaves_instance_types_to_the_group(
    docs: dict[str, Any],
) -> None:
    data = docs["launch-template"]["LaunchTemplateData"]
    assert data["MetadataOptions"] == {
        "HttpEndpoint": "enabled",
        "HttpTokens": "required",
        "HttpPutResponseHopLimit": 1,
        "InstanceMetadataTags": "enabled",  # the daemon reads its group's name from its tags
    }
    # A mixed instances policy chooses types and buys spot itself; the template must not.
    assert "InstanceType" not in data and "InstanceMarketOptions" not in data
    assert data["IamInstanceProfile"] == {"Name": "capture-daemon"}
    (root,) = data["BlockDeviceMappings"]
    assert root["Ebs"]["VolumeType"] == "gp3" and root["Ebs"]["Encrypted"] is True
    assert {spec["ResourceType"] for spec in data["TagSpecifications"]} == {"instance", "volume"}


def test_group_buys_only_spot_across_several_gpu_types(docs: dict[str, Any]) -> None:
    group = docs["asg"]
    policy = group["MixedInstancesPolicy"]
    assert policy["InstancesDistribution"] == {
        "OnDemandBaseCapacity": 0,
        "OnDemandPercentageAboveBaseCapacity": 0,
        "SpotAllocationStrategy": "price-capacity-optimized",
    }
    types = {override["InstanceType"] for override in policy["LaunchTemplate"]["Overrides"]}
    assert {"g5.xlarge", "g5.2xlarge", "g6.xlarge", "g6.2xlarge", "g4dn.xlarge"} <= types
    assert group["CapacityRebalance"] is True and group["NewInstancesProtectedFromScaleIn"] is False
    assert (group["MinSize"], group["DesiredCapacity"]) == (0, 0) and group["MaxSize"] >= 1
    assert group["VPCZoneIdentifier"] == ",".join(SAMPLE.subnet_ids)


def test_names_agree_across_the_documents(docs: dict[str, Any]) -> None:
    group = docs["asg"]["AutoScalingGroupName"]
    template = docs["launch-template"]["LaunchTemplateName"]
    spec = docs["asg"]["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]
    assert spec == {"LaunchTemplateName": template, "Version": "$Default"}
    assert docs["lifecycle-hook"]["AutoScalingGroupName"] == group
    assert docs["scaling-policy"]["AutoScalingGroupName"] == group
    assert docs["instance-refresh"]["AutoScalingGroupName"] == group
    metric = docs["scaling-policy"]["TargetTrackingConfiguration"]["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"], metric["Statistic"]) == (
        "CaptureDaemon",
        "BacklogPerInstance",
        "Average",
    )
    assert metric["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": group}]
    statements = {s["Sid"]: s for s in docs["instance-policy"]["Statement"]}
    assert statements["PublishBacklogMetrics"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": metric["Namespace"]}
    }
    assert statements["OwnInstanceInTheGroup"]["Resource"].endswith(f":autoScalingGroupName/{group}")
    assert f"parameter{SAMPLE.ssm_path}/*" in " ".join(statements["ReadDaemonEnvironment"]["Resource"])


def test_the_instance_role_writes_only_outputs_and_checkpoints_and_reads_inputs() -> None:
    # Given a fleet whose uploads land under uploads/ and customer/, outputs under jobs/ and deliveries/
    inputs = dataclasses.replace(
        SAMPLE, bucket="capture-outputs", input_prefixes=("uploads/", "customer/"),
        output_prefixes=("jobs/", "deliveries/"),
    )  # fmt: skip
    policy = fleet_apply.render(inputs)["instance-policy"]
    statements = {st["Sid"]: st for st in policy["Statement"]}
    writes = statements["WriteOutputsAndCheckpoints"]
    # Then objects are written only under the output and checkpoint prefixes, inputs only read, and the
    # bucket listed only under the prefixes the daemon lists (its checkpoints and outputs)
    assert "s3:PutObject" in writes["Action"] and "s3:PutObject" not in statements["ReadInputs"]["Action"]
    assert writes["Resource"] == [
        f"arn:aws:s3:::capture-outputs/{p}*" for p in ("jobs/", "deliveries/", "checkpoints/")
    ]
    assert statements["ReadInputs"]["Resource"] == [
        "arn:aws:s3:::capture-outputs/uploads/*", "arn:aws:s3:::capture-outputs/customer/*"
    ]  # fmt: skip
    listing = statements["ListOwnPrefixes"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["jobs/*", "deliveries/*", "checkpoints/*"]}}
    assert not any(r.endswith("capture-outputs/*") for st in policy["Statement"] for r in _resources(st))


def _resources(statement: dict[str, Any]) -> list[str]:
    resource = statement["Resource"]
    return resource if isinstance(resource, list) else [resource]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_prefixes": ("jobs/",)}, "inputs are read-only"),
        ({"output_prefixes": ("",)}, "not the root"),
        ({"checkpoint_prefix": "checkpoints"}, "ending in '/'"),
    ],
)
def test_prefixes_that_would_widen_the_roles_scope_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(fleet_apply.FleetError, match=message):
        dataclasses.replace(SAMPLE, bucket="capture-outputs", **change)


def test_tag_keys_are_allowed_with_tags_in_instance_metadata(docs: dict[str, Any]) -> None:
    keys = [tag["Key"] for tag in docs["asg"]["Tags"]]
    for spec in docs["launch-template"]["LaunchTemplateData"]["TagSpecifications"]:
        keys += [tag["Key"] for tag in spec["Tags"]]
    assert all(IMDS_TAG_KEY.fullmatch(key) and key not in (".", "..", "_index") for key in keys), keys


def test_the_template_carries_the_rendered_user_data(docs: dict[str, Any]) -> None:
    script = base64.b64decode(docs["launch-template"]["LaunchTemplateData"]["UserData"]).decode()
    assert script == fleet_apply.render_user_data(SAMPLE)
    assert f"RELEASE_URL='{SAMPLE.release_url}'" in script and f"SSM_PATH='{SAMPLE.ssm_path}'" in script
    assert not fleet_apply.PLACEHOLDER.search(script)
    assert len(script.encode()) <= fleet_apply.USER_DATA_MAX_BYTES


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"release_url": "s3://b/releases/x.tar.gz'; rm -rf /"}, "only letters"),
        ({"release_url": "https://github.com/acme/capture-daemon.git"}, "needs --release-ref"),
        ({"release_url": "s3://capture-outputs/builds/x.tar.gz"}, "under releases/"),
        ({"subnet_ids": ("subnet-zz",)}, "subnet"),
        ({"ssm_path": "capture-daemon"}, "SSM path"),
    ],
)
def test_inputs_that_would_break_an_instance_are_refused(change: dict[str, Any], message: str) -> None:
    fields = {**SAMPLE.__dict__, **change}
    with pytest.raises(fleet_apply.FleetError, match=message):
        fleet_apply.Inputs(**fields)


def test_a_list_value_fills_a_list_item_by_item_and_a_string_joined() -> None:
    values = {"IDS": ["a", "b"], "ONE": "x"}
    assert fleet_apply.fill({"l": ["@@IDS@@", "@@ONE@@"], "s": "@@IDS@@/@@ONE@@"}, values) == {
        "l": ["a", "b", "x"],
        "s": "a,b/x",
    }
    missing: set[str] = set()
    fleet_apply.fill(["@@NOPE@@"], values, missing)
    assert missing == {"NOPE"}


# --- User data -----------------------------------------------------------------------------------------


def test_user_data_is_valid_bash(tmp_path: Path) -> None:
    rendered = tmp_path / "user-data.sh"
    rendered.write_text(fleet_apply.render_user_data(SAMPLE))
    for path in (OPS / "user-data.sh", rendered):
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck not installed (apt install shellcheck)"
)
def test_user_data_passes_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", str(OPS / "user-data.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_user_data_installs_the_unit_that_ops_systemd_provides() -> None:
    script = (OPS / "user-data.sh").read_text()
    installed = set(re.findall(r"ops/systemd/([\w@.-]+)", script))
    assert "capture-daemon@.service" in installed
    assert 'units+=("capture-daemon@$gpu.service")' in script  # one instance per GPU
    # each with its share of the memory, written before the units start
    share = script.index(
        'ops/systemd/memory-share.sh" "$gpus" >/etc/systemd/system/capture-daemon@.service.d/'
    )
    assert share < script.index('systemctl enable --now "${units[@]}"')
    unit = SYSTEMD / "capture-daemon@.service"
    if not unit.is_file():
        pytest.skip("ops/systemd/capture-daemon@.service is not written yet")
    assert installed <= {path.name for path in SYSTEMD.iterdir()}
    # Where user data writes the environment is where the unit reads it.
    env_file = re.search(r"^ENV_FILE=(\S+)$", script, re.MULTILINE)
    assert env_file and env_file.group(1) == "/etc/capture-daemon/daemon.env"
    environment_files = re.findall(r"^EnvironmentFile=-?(\S+)$", unit.read_text(), re.MULTILINE)
    assert env_file.group(1) in environment_files, environment_files
    assert re.search(r"^WorkingDirectory=/opt/capture-daemon$", unit.read_text(), re.MULTILINE)
    # The workers take a lock file in gsplat's build folder each time they load it: it must be writable.
    writable = re.findall(r"^ReadWritePaths=(.+)$", unit.read_text(), re.MULTILINE)
    if writable:
        extensions = re.search(r"^TORCH_EXTENSIONS_DIR=\$CACHE_DIR/(\S+)$", script, re.MULTILINE)
        cache = re.search(r"^CACHE_DIR=(\S+)$", script, re.MULTILINE)
        assert extensions and cache and cache.group(1) in " ".join(writable).split()


def test_user_data_starts_the_lifecycle_watcher_from_the_release() -> None:
    script = (OPS / "user-data.sh").read_text()
    assert "$APP_DIR/ops/launch-template/capture-daemon-lifecycle.service" in script
    assert "systemctl enable --now capture-daemon-lifecycle.service" in script
    unit = (OPS / "capture-daemon-lifecycle.service").read_text()
    assert "ExecStart=/bin/bash /opt/capture-daemon/ops/launch-template/lifecycle-watch.sh" in unit


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck not installed (apt install shellcheck)"
)
def test_lifecycle_watcher_passes_bash_n_and_shellcheck() -> None:
    for command in (["bash", "-n"], ["shellcheck"]):
        result = subprocess.run(
            [*command, str(OPS / "lifecycle-watch.sh")], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_lifecycle_unit_passes_systemd_analyze_verify() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(OPS / "capture-daemon-lifecycle.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- Applied to moto -----------------------------------------------------------------------------------


class MotoAws:
    """Clients, credentials and a network (VPC, two subnets, a security group, an AMI) in one region."""

    def __init__(self, server: MotoS3Server, region: str, home: Path) -> None:
        self.server, self.region = server, region
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_DEFAULT_REGION": region,
            "AWS_CONFIG_FILE": str(home / "config"),  # absent: no profile of this machine leaks in
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        ec2 = self.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
        self.subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{n}.0/24")["Subnet"]["SubnetId"] for n in (1, 2)
        ]
        self.security_group = ec2.create_security_group(
            GroupName="capture-daemon", Description="workers: no inbound", VpcId=vpc
        )["GroupId"]
        self.image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]

    def client(self, service: str) -> Any:
        return boto3.session.Session().client(
            service,
            endpoint_url=self.server.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.server.access_key,
            aws_secret_access_key=self.server.secret_key,
        )

    def network_args(self) -> list[str]:
        return ["--region", self.region, "--subnets", ",".join(self.subnets)]

    def run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"{command[:4]}…\n{result.stdout}\n{result.stderr}"
        return result

    def apply(self, *args: str) -> subprocess.CompletedProcess[str]:
        common = [*self.network_args(), "--security-groups", self.security_group]
        return self.run(
            [sys.executable, str(SCRIPT), *common, "--endpoint-url", self.server.endpoint_url, *args]
        )


RELEASE_1 = "s3://capture-outputs/releases/capture-daemon-1.0.0.tar.gz"
RELEASE_2 = "s3://capture-outputs/releases/capture-daemon-1.1.0.tar.gz"


@pytest.fixture(scope="module")
def fleet(moto_s3: MotoS3Server, tmp_path_factory: pytest.TempPathFactory) -> MotoAws:
    """A fleet applied once with the IAM step, its AMI resolved through an SSM parameter."""
    aws = MotoAws(moto_s3, "us-east-1", tmp_path_factory.mktemp("aws-home"))
    aws.client("ssm").put_parameter(Name="/capture-daemon-tests/ami-id", Value=aws.image_id, Type="String")
    aws.apply(
        "--release-url", RELEASE_1, "--ami-parameter", "/capture-daemon-tests/ami-id",
        "--iam", "--bucket", "capture-outputs",
    )  # fmt: skip
    return aws


STUB_DRAIN = """#!/bin/bash
echo "drain $*" >>"$CALLS"
exit "$DRAIN_STATUS"
"""

AWS_CLI = ROOT / ".venv-tools" / "bin" / "aws"
"""The real AWS CLI (v1, from PyPI), in its own venv: it pins an older botocore than our boto3 (Makefile)."""


@pytest.fixture
def aws_front(fleet: MotoAws) -> Iterator[AwsFront]:
    front = AwsFront(fleet.server.endpoint_url, fleet.client("autoscaling")).start()
    yield front
    front.stop()


@pytest.mark.parametrize("drain_status", [0, 1])
def test_lifecycle_watcher_drains_then_lets_the_termination_go_on(
    imds: Any, fleet: MotoAws, aws_front: AwsFront, tmp_path: Path, drain_status: int
) -> None:
    # Given an instance in service in the applied group (moto), the real AWS CLI on the PATH, pointed at
    # moto through a front that records each call, and the drain script stubbed (tested on its own)
    assert AWS_CLI.exists(), f"{AWS_CLI} is missing: `make tools` installs it"
    group = json.loads((OPS / "asg.json").read_text())["AutoScalingGroupName"]
    hook = json.loads((OPS / "lifecycle-hook.json").read_text())["LifecycleHookName"]
    state = "/latest/meta-data/autoscaling/target-lifecycle-state"
    imds.serve(state, "InService")
    imds.serve("/latest/meta-data/placement/region", fleet.region)
    imds.serve("/latest/meta-data/tags/instance/aws:autoscaling:groupName", group)
    (tmp_path / "drain.sh").write_text(STUB_DRAIN)
    calls = tmp_path / "calls.log"
    env = {
        **fleet.env,
        "PATH": f"{AWS_CLI.parent}:{os.environ['PATH']}",
        "AWS_ENDPOINT_URL": aws_front.url,
        "IMDS_URL": imds.url,
        "CAPTURE_DAEMON_DRAIN": str(tmp_path / "drain.sh"),
        "LIFECYCLE_POLL_S": "0.05",
        "CALLS": str(calls),
        "DRAIN_STATUS": str(drain_status),
    }
    env.pop("AWS_DEFAULT_REGION")  # the watcher takes the region from the instance's metadata
    watcher = subprocess.Popen(
        ["bash", str(OPS / "lifecycle-watch.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: imds.count("GET", state) >= 3, timeout=60)
        assert not calls.exists() and aws_front.calls == []  # in service: it only watches
        # When the group starts terminating it,
        imds.serve(state, "Terminated")
        output, _ = watcher.communicate(timeout=120)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    # then it lists the group's hooks, beats, drains and completes the hook, even when the drain failed
    assert watcher.returncode == 0, output
    assert aws_front.actions() == [
        "DescribeLifecycleHooks", "RecordLifecycleActionHeartbeat", "CompleteLifecycleAction"
    ]  # fmt: skip
    where = {"AutoScalingGroupName": group, "LifecycleHookName": hook, "InstanceId": imds.instance_id}
    described, beat, completed = aws_front.calls
    assert described["AutoScalingGroupName"] == group
    assert {k: beat[k] for k in where} == where
    assert {k: completed[k] for k in where} == where and completed["LifecycleActionResult"] == "CONTINUE"
    assert calls.read_text().splitlines() == ["drain --checkpoint"]
    assert ("workers drained" in output) == (drain_status == 0)
    assert f"lifecycle hook {hook} completed: termination goes on" in output


def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _default_version(ec2: Any) -> dict[str, Any]:
    versions = ec2.describe_launch_template_versions(
        LaunchTemplateName="capture-daemon", Versions=["$Default"]
    )
    (version,) = versions["LaunchTemplateVersions"]
    return version


def test_apply_creates_a_template_that_requires_imdsv2(fleet: MotoAws) -> None:
    version = _default_version(fleet.client("ec2"))
    data = version["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert data["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    assert data["ImageId"] == fleet.image_id  # resolved from the SSM parameter
    assert data["SecurityGroupIds"] == [fleet.security_group]
    assert f"RELEASE_URL='{RELEASE_1}'" in base64.b64decode(data["UserData"]).decode()


def test_apply_creates_an_all_spot_group_with_capacity_rebalancing(fleet: MotoAws) -> None:
    scaling = fleet.client("autoscaling")
    (group,) = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["capture-daemon"])[
        "AutoScalingGroups"
    ]
    policy = group["MixedInstancesPolicy"]
    assert policy["InstancesDistribution"]["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0
    overrides = [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]]
    expected = [o["InstanceType"] for o in json.loads((OPS / "asg.json").read_text())["MixedInstancesPolicy"][
        "LaunchTemplate"]["Overrides"]]  # fmt: skip
    assert overrides == expected
    assert policy["LaunchTemplate"]["LaunchTemplateSpecification"]["Version"] == "$Default"
    assert group["CapacityRebalance"] is True
    assert group["NewInstancesProtectedFromScaleIn"] is False
    assert sorted(group["VPCZoneIdentifier"].split(",")) == sorted(fleet.subnets)
    assert {t["Key"]: t["PropagateAtLaunch"] for t in group["Tags"]} == {"Name": True, "Project": True}


def test_apply_puts_the_drain_hook_and_the_backlog_policy(fleet: MotoAws) -> None:
    scaling = fleet.client("autoscaling")
    (hook,) = scaling.describe_lifecycle_hooks(AutoScalingGroupName="capture-daemon")["LifecycleHooks"]
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert (hook["HeartbeatTimeout"], hook["DefaultResult"]) == (300, "CONTINUE")
    (policy,) = scaling.describe_policies(AutoScalingGroupName="capture-daemon")["ScalingPolicies"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingConfiguration"]
    metric = tracking["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"]) == ("CaptureDaemon", "BacklogPerInstance")
    assert metric["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": "capture-daemon"}]
    assert tracking["TargetValue"] == 1.0 and tracking["DisableScaleIn"] is False


def test_apply_with_iam_creates_the_instance_profile_named_in_the_template(fleet: MotoAws) -> None:
    iam = fleet.client("iam")
    profile = iam.get_instance_profile(InstanceProfileName="capture-daemon")["InstanceProfile"]
    assert [role["RoleName"] for role in profile["Roles"]] == ["capture-daemon"]
    stored = iam.get_role_policy(RoleName="capture-daemon", PolicyName="capture-daemon")["PolicyDocument"]
    stored = json.loads(stored) if isinstance(stored, str) else stored
    # (moto validated it on the way in) scoped: inputs read-only, outputs and checkpoints read-write
    statements = {st["Sid"]: st for st in stored["Statement"]}
    assert statements["ReadInputs"]["Action"] == "s3:GetObject"
    assert statements["ReadInputs"]["Resource"] == ["arn:aws:s3:::capture-outputs/uploads/*"]
    assert statements["WriteOutputsAndCheckpoints"]["Resource"] == [
        "arn:aws:s3:::capture-outputs/jobs/*", "arn:aws:s3:::capture-outputs/checkpoints/*"
    ]  # fmt: skip
    assert "arn:aws:s3:::capture-outputs/*" not in json.dumps(stored)  # never the whole bucket


def test_apply_again_rolls_a_new_default_version_and_keeps_the_capacity(fleet: MotoAws) -> None:
    # Given a running fleet of two, when a new release is applied,
    scaling, ec2 = fleet.client("autoscaling"), fleet.client("ec2")
    scaling.set_desired_capacity(AutoScalingGroupName="capture-daemon", DesiredCapacity=2)
    before = _default_version(ec2)["VersionNumber"]
    out = fleet.apply("--release-url", RELEASE_2, "--image-id", fleet.image_id).stderr
    # then the template has a new default version with the new release, and the group kept its size.
    version = _default_version(ec2)
    assert version["VersionNumber"] == before + 1 and f"version {before + 1} is the default" in out
    assert (
        f"RELEASE_URL='{RELEASE_2}'" in base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()
    )
    (group,) = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["capture-daemon"])[
        "AutoScalingGroups"
    ]
    assert group["DesiredCapacity"] == 2
    assert len(scaling.describe_policies(AutoScalingGroupName="capture-daemon")["ScalingPolicies"]) == 1


def test_the_policy_reads_the_metric_as_the_workers_publish_it(fleet: MotoAws) -> None:
    # Given a datum shaped as daemon/fleet/backlog.py puts it (same namespace, name and group dimension),
    from daemon.config import DEFAULT_CLOUDWATCH_NAMESPACE

    spec = json.loads((OPS / "scaling-policy.json").read_text())["TargetTrackingConfiguration"][
        "CustomizedMetricSpecification"
    ]
    assert spec["Namespace"] == DEFAULT_CLOUDWATCH_NAMESPACE
    cloudwatch = fleet.client("cloudwatch")
    cloudwatch.put_metric_data(
        Namespace=DEFAULT_CLOUDWATCH_NAMESPACE,
        MetricData=[
            {
                "MetricName": "BacklogPerInstance",
                "Value": 3.0,
                "Unit": "Count",
                "Dimensions": spec["Dimensions"],
            }
        ],
    )
    # when CloudWatch is asked for exactly what the policy tracks, then it has the datum.
    now = datetime.now(UTC)
    stats = cloudwatch.get_metric_statistics(
        Namespace=spec["Namespace"],
        MetricName=spec["MetricName"],
        Dimensions=spec["Dimensions"],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=1),
        Period=60,
        Statistics=[spec["Statistic"]],
    )
    assert [point[spec["Statistic"]] for point in stats["Datapoints"]] == [3.0]


def test_dry_run_prints_the_documents_and_calls_nothing(fleet: MotoAws, tmp_path: Path) -> None:
    image = "ami-0123456789abcdef0"
    result = fleet.run(
        [sys.executable, str(SCRIPT), *fleet.network_args(), "--security-groups", fleet.security_group,
         "--release-url", RELEASE_1, "--image-id", image, "--dry-run", "--out", str(tmp_path),
         "--endpoint-url", "http://127.0.0.1:9"]  # nothing listens there: any call would fail
    )  # fmt: skip
    printed = json.loads(result.stdout)
    assert set(printed) == set(fleet_apply.DOCUMENTS)  # no --bucket: no IAM documents
    assert printed["launch-template"]["LaunchTemplateData"]["ImageId"] == image
    assert json.loads((tmp_path / "asg.json").read_text()) == printed["asg"]


@pytest.mark.skipif(shutil.which("aws") is None, reason="the AWS CLI is not installed")
def test_the_aws_cli_accepts_the_rendered_documents(
    moto_s3: MotoS3Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Another region of the same moto server: a fleet of its own, made with nothing but the AWS CLI.
    aws = MotoAws(moto_s3, "us-west-2", tmp_path_factory.mktemp("aws-home"))
    out = tmp_path_factory.mktemp("rendered")
    aws.apply("--release-url", RELEASE_1, "--image-id", aws.image_id, "--dry-run", "--out", str(out))
    cli = ["aws", "--endpoint-url", moto_s3.endpoint_url, "--region", aws.region]
    for command in (
        ["ec2", "create-launch-template", "--cli-input-json", f"file://{out}/launch-template.json"],
        ["autoscaling", "create-auto-scaling-group", "--cli-input-json", f"file://{out}/asg.json"],
        ["autoscaling", "put-lifecycle-hook", "--cli-input-json", f"file://{out}/lifecycle-hook.json"],
        ["autoscaling", "put-scaling-policy", "--cli-input-json", f"file://{out}/scaling-policy.json"],
    ):
        aws.run([*cli, *command])
    (group,) = aws.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=["capture-daemon"]
    )["AutoScalingGroups"]
    assert group["MixedInstancesPolicy"]["InstancesDistribution"]["SpotAllocationStrategy"] == (
        "price-capacity-optimized"
    )


def test_a_refused_input_stops_the_script_before_any_call(capsys: pytest.CaptureFixture[str]) -> None:
    status = fleet_apply.main(
        ["--region", "us-east-1", "--subnets", SAMPLE.subnet_ids[0],
         "--security-groups", SAMPLE.security_group_ids[0], "--image-id", SAMPLE.image_id,
         "--release-url", "https://github.com/acme/capture-daemon.git", "--endpoint-url", "http://127.0.0.1:9"]
    )  # fmt: skip
    assert status == 2 and "needs --release-ref" in capsys.readouterr().err
