"""Settings: every knob comes from the environment (and an optional `.env`), parsed once at start-up.

A bad value stops start-up with a `ConfigError` naming the variable. Precedence, in one line:
process environment > `.env` file (path in `DAEMON_ENV_FILE`, default `./.env`) > the defaults below.
The README's configuration table is generated from `VARIABLES`, so each variable's doc lives here once.

Long on purpose: one table of every variable (name, parser, default, doc) and the typed settings it fills;
split, a reader would have to hold two files to see what one variable does.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from .errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_QUEUES = ("high", "default", "low")
"""What a worker serves when DAEMON_QUEUES is unset, highest first: every job priority, each an rq queue
of that name. `daemon.spec.model.PRIORITIES` is this tuple (the spec may import config, not the reverse)."""

OWNER_PLACEHOLDER = "{owner_id}"
"""In S3_INPUT_PREFIXES / S3_OUTPUT_PREFIXES, a whole segment filled with the spec's owner_id."""

DEFAULT_IMDS_URL = "http://169.254.169.254"
"""Where IMDS answers on every EC2 instance (IPv6-only subnets: http://[fd00:ec2::254])."""

DEFAULT_CLOUDWATCH_NAMESPACE = "CaptureDaemon"
"""CloudWatch namespace of the backlog metrics; ops/launch-template's scaling and instance policies name
it too."""


@dataclass(frozen=True)
class Var:
    """One environment variable: its name, parser, default and a one-line doc for the README."""

    name: str
    parse: Callable[[str], Any]
    default: str | None
    doc: str
    secret: bool = False


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _optional_port(raw: str) -> int | None:
    if not raw.strip():
        return None
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port (0-65535), or empty")
    return value


def _optional(raw: str) -> str | None:
    return raw.strip() or None


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _csv(raw: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not items:
        raise ValueError("expected a comma-separated list")
    return items


_ROOT_SEGMENT = re.compile(r"[A-Za-z0-9._=-]+")


def _prefixes(raw: str) -> tuple[str, ...]:
    """Key roots: each a folder ('/' added), its segments plain names or `{owner_id}`."""
    roots = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        root = part.rstrip("/") + "/"
        for segment in root[:-1].split("/"):
            if segment != OWNER_PLACEHOLDER and not (
                _ROOT_SEGMENT.fullmatch(segment) and segment not in ".."
            ):
                raise ValueError(
                    f"{part!r}: segments must be names (A-Z a-z 0-9 ._=-) or {OWNER_PLACEHOLDER}"
                )
        roots.append(root)
    return tuple(roots)


def _networks(raw: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())


def _url(schemes: tuple[str, ...]) -> Callable[[str], str | None]:
    def parse(raw: str) -> str | None:
        value = raw.strip()
        if not value:
            return None
        if not value.startswith(tuple(f"{s}://" for s in schemes)):
            raise ValueError(f"expected a {'/'.join(schemes)} URL")
        return value

    return parse


def redact_password(value: str) -> str:
    """`scheme://user:secret@host` → `scheme://user:***@host`, for URLs shown in errors and logs."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", value)


def url_password(url: str | None) -> str | None:
    """The password inside a URL (a Redis URL may carry one), to mask it in logs."""
    match = re.search(r"://[^/@:]*:([^/@]+)@", url or "")
    return match.group(1) if match else None


def _default_worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


VARIABLES: tuple[Var, ...] = (
    # Queue and worker
    Var(
        "REDIS_URL",
        _url(("redis", "rediss", "unix")),
        "redis://127.0.0.1:6379/0",
        "Redis holding the queues. `make demo` starts a private one when unset.",
    ),
    Var(
        "DAEMON_QUEUES", _csv, ",".join(DEFAULT_QUEUES), "Queues this worker serves, highest priority first."
    ),
    Var(
        "DAEMON_WORKER_NAME",
        _optional,
        "",
        "Worker name in rq and in progress rows; default `<hostname>.<pid>`.",
    ),
    Var(
        "DAEMON_MONITOR_INTERVAL_S",
        _positive_int,
        "10",
        "How often the worker heartbeats a running job; a dead worker's job expires after this + 60 s.",
    ),
    Var(
        "DAEMON_MAINTENANCE_INTERVAL_S",
        _positive_int,
        "20",
        "How often a worker looks for abandoned jobs (rq's registry cleanup); rq's default is 600 s.",
    ),
    Var(
        "DAEMON_STOP_TIMEOUT_S",
        _positive_float,
        "90",
        "After SIGTERM, how long a running job gets to stop and requeue before it is killed.",
    ),
    Var(
        "JOB_MAX_ATTEMPTS",
        _positive_int,
        "3",
        "Attempts per job for retryable failures (crash, lost worker, network); preemptions don't count.",
    ),
    Var(
        "JOB_MAX_PREEMPTIONS",
        _positive_int,
        "20",
        "Preemptions (spot notices, SIGTERM, lost instances) a job may take before it fails.",
    ),
    Var(
        "JOB_RETRY_BACKOFF_S",
        _positive_int,
        "30",
        "Delay before the first retry of a failed attempt; doubles for each later one.",
    ),
    Var("DAEMON_WORK_DIR", Path, "var/work", "Scratch space for running jobs (one folder per job)."),
    Var(
        "DAEMON_STATE_DIR",
        Path,
        "var/state",
        "Where progress rows are kept as JSON files when Supabase is not configured.",
    ),
    # Storage
    Var(
        "STORAGE_BACKEND",
        _choice("local", "s3"),
        "local",
        "Where outputs go when a job names no destination: `local` (DAEMON_OUTPUT_DIR) or `s3`.",
    ),
    Var("DAEMON_OUTPUT_DIR", Path, "var/outputs", "Root of the local output store."),
    Var("S3_BUCKET", _optional, "", "Bucket for outputs and for inputs given as S3 keys."),
    Var("S3_PREFIX", _optional, "jobs", "Key prefix for outputs: `<prefix>/<job id>/<name>`."),
    Var(
        "S3_INPUT_PREFIXES",
        _prefixes,
        "uploads/",
        "Where inputs given as S3 keys may be (comma-separated key roots; `{owner_id}` as a segment is the "
        "spec's owner, e.g. `uploads/{owner_id}/`). Any other key is refused (`s3_key_not_allowed`).",
    ),
    Var(
        "S3_OUTPUT_PREFIXES",
        _prefixes,
        "",
        "Roots an `output.s3_prefix` may lie under besides S3_PREFIX itself (comma-separated, `{owner_id}` "
        "allowed, e.g. `deliveries/{owner_id}/`); empty: only S3_PREFIX (`s3_prefix_not_allowed`).",
    ),
    Var(
        "S3_ENDPOINT_URL",
        _url(("http", "https")),
        "",
        "S3-compatible endpoint (SeaweedFS, MinIO, R2); unset for AWS. Credentials: boto3's usual chain.",
    ),
    Var("AWS_REGION", _optional, "", "Region for S3 (boto3's default chain when unset)."),
    Var(
        "CHECKPOINT_PREFIX",
        _optional,
        "checkpoints",
        "Key prefix of checkpoints in S3_BUCKET (`<prefix>/<job id>/…`); folder under DAEMON_STATE_DIR "
        "when STORAGE_BACKEND=local.",
    ),
    Var(
        "CHECKPOINT_INTERVAL_S",
        _positive_float,
        "300",
        "Longest time between two checkpoints inside a stage (splat training; the pointcloud kind's "
        "clean, classify and tile, at a tile's end): what a sudden loss costs, at most.",
    ),
    Var(
        "SFM_THREADS",
        _non_negative_int,
        "0",
        "CPU threads for structure from motion; 0 = all cores. 1 makes SfM bit-reproducible (slower).",
    ),
    Var(
        "POINTCLOUD_PROCESSES",
        _non_negative_int,
        "0",
        "Worker processes the pointcloud kind spreads a cloud's tiles over; 0 = one per core this daemon "
        "may run on. Each holds about one tile (~300 MB). With one daemon per GPU on a host, give each "
        "its share of the cores.",
    ),
    Var(
        "POINTCLOUD_TILE_POINTS",
        _positive_int,
        "1000000",
        "Points a pointcloud tile holds on average (the cloud is cut in 4^n tiles): a worker process's "
        "memory, and how often a pass over the tiles can checkpoint. Fixed per job when it is read.",
    ),
    Var(
        "CHROMIUM_PATH",
        _optional,
        "/usr/bin/chromium",
        "The Chromium the mesh kind draws thumbnails with (headless, SwiftShader without a GPU): Debian's "
        "package, or on Ubuntu the headless shell Playwright installs (the launch template's user data).",
    ),
    Var("S3_MULTIPART_THRESHOLD_MB", _positive_int, "64", "Files above this size upload in parts."),
    Var("S3_MULTIPART_CHUNK_MB", _positive_int, "16", "Part size for multipart uploads (min 5)."),
    # Downloads of user URLs
    Var("DOWNLOAD_MAX_BYTES", _positive_int, str(4 << 30), "Largest single input accepted, in bytes."),
    Var(
        "JOB_INPUT_MAX_BYTES",
        _positive_int,
        str(20 << 30),
        "Most bytes one job's inputs may take together (the work disk is shared by every GPU's worker).",
    ),
    Var("DOWNLOAD_TIMEOUT_S", _positive_float, "600", "Wall-clock cap for one input download."),
    Var(
        "DOWNLOAD_MAX_REDIRECTS", _non_negative_int, "5", "Redirects followed per download, each re-checked."
    ),
    Var(
        "URL_ALLOW_NETWORKS",
        _networks,
        "",
        "CIDRs exempt from the private-address guard (tests: 127.0.0.1/32). Keep empty in production.",
    ),
    # Progress rows
    Var("SUPABASE_URL", _url(("http", "https")), "", "Supabase project URL; unset = rows kept locally."),
    Var("SUPABASE_SERVICE_ROLE_KEY", _optional, "", "Service-role key used to write rows.", secret=True),
    Var("SUPABASE_JOBS_TABLE", _optional, "jobs", "Table holding one progress row per job."),
    Var(
        "PROGRESS_MIN_INTERVAL_S",
        _positive_float,
        "1.0",
        "Least time between two progress writes of one job (latest value wins).",
    ),
    Var("HEARTBEAT_INTERVAL_S", _positive_float, "15", "How often a running job's row heartbeat is written."),
    # Callbacks
    Var(
        "CALLBACK_SECRET",
        _optional,
        "",
        "Standard Webhooks secret (`whsec_…`). Jobs with a callback_url are refused without it.",
        secret=True,
    ),
    Var(
        "CALLBACK_TIMEOUT_S",
        _positive_float,
        "10",
        "Deadline of one callback delivery, whole: connect, send, answer.",
    ),
    Var("CALLBACK_MAX_AGE_S", _positive_int, str(24 * 3600), "Give up retrying a callback after this."),
    Var(
        "OUTBOX_POLL_INTERVAL_S",
        _positive_float,
        "1.0",
        "How often the outbox (pending callbacks and row writes) is polled for due items.",
    ),
    # Spot notices (EC2 instance metadata)
    Var(
        "IMDS_URL",
        _url(("http",)),
        DEFAULT_IMDS_URL,
        "EC2 instance metadata service polled for spot notices; empty = don't watch. Off EC2 it is skipped.",
    ),
    Var(
        "SPOT_POLL_INTERVAL_S",
        _positive_float,
        "5",
        "How often the spot interruption and rebalance notices are polled (AWS recommends 5 s).",
    ),
    # Operating the fleet: health endpoint, scaling metric, scale-in protection
    Var("DAEMON_HEALTH_BIND", str, "127.0.0.1", "Address of the /healthz and /metrics server."),
    Var(
        "DAEMON_HEALTH_PORT",
        _optional_port,
        "",
        "Port of /healthz and Prometheus /metrics; empty = no server, 0 = any free port. The systemd "
        "unit sets 947N for GPU N.",
    ),
    Var(
        "DAEMON_HEALTH_STALE_S",
        _positive_float,
        "90",
        "/healthz answers 503 when the worker's main loop has not ticked for this long.",
    ),
    Var(
        "DAEMON_METRICS_DIR",
        _optional,
        "",
        "Folder where work-horses leave their Prometheus samples (one per worker, emptied at start); "
        "empty = `<DAEMON_STATE_DIR>/metrics/<port or worker name>`.",
    ),
    Var(
        "AUTOSCALING_GROUP",
        _optional,
        "",
        "Auto Scaling group whose backlog is published and whose instance is protected; empty = from the "
        "instance tag aws:autoscaling:groupName (IMDS). Off EC2, when set, the backlog is only published.",
    ),
    Var(
        "CLOUDWATCH_NAMESPACE",
        _optional,
        DEFAULT_CLOUDWATCH_NAMESPACE,
        "CloudWatch namespace of Backlog, BacklogTotal and BacklogPerInstance (the scaling policy names it).",
    ),
    Var(
        "FLEET_METRICS_INTERVAL_S",
        _positive_float,
        "60",
        "How often the group's backlog is published (by the one worker holding the Redis lease).",
    ),
    Var(
        "SCALE_IN_PROTECTION",
        _bool,
        "true",
        "Protect the instance from Auto Scaling scale-in while any of its workers runs a job.",
    ),
    # Logs and errors
    Var("LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info", "Log level."),
    Var("SENTRY_DSN", _optional, "", "Send errors (and abandoned jobs) to Sentry when set.", secret=True),
    Var("SENTRY_ENVIRONMENT", _optional, "production", "Sentry environment tag."),
)


@dataclass(frozen=True)
class Settings:
    """The parsed configuration. Build it with `load_settings()`; never read os.environ elsewhere."""

    def __repr__(self) -> str:
        """Every setting but the secrets (left out) and the Redis URL's password (masked): a repr ends
        up in tracebacks, logs and Sentry."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "redis_url":
                value = re.sub(r"(://[^/@:]*:)[^/@]+@", r"\1[Filtered]@", value)
            if f.repr:
                shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    redis_url: str
    queues: tuple[str, ...]
    worker_name: str
    monitor_interval_s: int
    maintenance_interval_s: int
    stop_timeout_s: float
    job_max_attempts: int
    job_retry_backoff_s: int
    work_dir: Path
    state_dir: Path
    storage_backend: str
    output_dir: Path
    checkpoint_prefix: str
    checkpoint_interval_s: float
    job_max_preemptions: int
    sfm_threads: int
    pointcloud_processes: int
    pointcloud_tile_points: int
    chromium_path: str | None
    s3_bucket: str | None
    s3_prefix: str
    s3_input_prefixes: tuple[str, ...]
    s3_output_prefixes: tuple[str, ...]
    s3_endpoint_url: str | None
    aws_region: str | None
    s3_multipart_threshold_mb: int
    s3_multipart_chunk_mb: int
    download_max_bytes: int
    job_input_max_bytes: int
    download_timeout_s: float
    download_max_redirects: int
    url_allow_networks: tuple[IPNetwork, ...]
    supabase_url: str | None
    supabase_key: str | None = field(repr=False)
    supabase_table: str = "jobs"
    progress_min_interval_s: float = 1.0
    heartbeat_interval_s: float = 15.0
    callback_secret: str | None = field(default=None, repr=False)
    callback_timeout_s: float = 10.0
    callback_max_age_s: int = 86400
    outbox_poll_interval_s: float = 1.0
    imds_url: str | None = DEFAULT_IMDS_URL
    spot_poll_interval_s: float = 5.0
    health_bind: str = "127.0.0.1"
    health_port: int | None = None
    health_stale_s: float = 90.0
    metrics_dir: str | None = None
    autoscaling_group: str | None = None
    cloudwatch_namespace: str | None = DEFAULT_CLOUDWATCH_NAMESPACE
    fleet_metrics_interval_s: float = 60.0
    scale_in_protection: bool = True
    log_level: str = "info"
    sentry_dsn: str | None = field(default=None, repr=False)
    sentry_environment: str = "production"

    @property
    def supabase_enabled(self) -> bool:
        return bool(self.supabase_url and self.supabase_key)


_FIELD_FOR_VAR = {
    "DAEMON_QUEUES": "queues",
    "DAEMON_WORKER_NAME": "worker_name",
    "DAEMON_MONITOR_INTERVAL_S": "monitor_interval_s",
    "DAEMON_MAINTENANCE_INTERVAL_S": "maintenance_interval_s",
    "DAEMON_STOP_TIMEOUT_S": "stop_timeout_s",
    "DAEMON_WORK_DIR": "work_dir",
    "DAEMON_STATE_DIR": "state_dir",
    "DAEMON_OUTPUT_DIR": "output_dir",
    "DAEMON_HEALTH_BIND": "health_bind",
    "DAEMON_HEALTH_PORT": "health_port",
    "DAEMON_HEALTH_STALE_S": "health_stale_s",
    "DAEMON_METRICS_DIR": "metrics_dir",
    "SUPABASE_SERVICE_ROLE_KEY": "supabase_key",
    "SUPABASE_JOBS_TABLE": "supabase_table",
}


def _field_name(var: Var) -> str:
    return _FIELD_FOR_VAR.get(var.name, var.name.lower())


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse every variable once; the first bad one stops start-up with its name in the message."""
    env = dict(os.environ if environ is None else environ)
    env_file = Path(env.get("DAEMON_ENV_FILE", ".env"))
    if env_file.is_file():
        file_values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        env = {**file_values, **env}
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = env.get(var.name, var.default or "")
        try:
            values[_field_name(var)] = var.parse(raw)
        except (ValueError, TypeError) as exc:
            shown = "<hidden>" if var.secret else repr(redact_password(raw))
            raise ConfigError(f"{var.name}={shown}: {exc}") from None
    values["worker_name"] = values["worker_name"] or _default_worker_name()
    values["s3_prefix"] = (values["s3_prefix"] or "jobs").strip("/")
    values["checkpoint_prefix"] = (values["checkpoint_prefix"] or "checkpoints").strip("/")
    values["supabase_table"] = values["supabase_table"] or "jobs"
    _check_consistency(values)
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in known})


def _check_consistency(values: Mapping[str, Any]) -> None:
    if values["storage_backend"] == "s3" and not values["s3_bucket"]:
        raise ConfigError("S3_BUCKET: required when STORAGE_BACKEND=s3")
    if bool(values["supabase_url"]) != bool(values["supabase_key"]):
        raise ConfigError("SUPABASE_SERVICE_ROLE_KEY: SUPABASE_URL and the key must be set together")
    if values["s3_multipart_chunk_mb"] < 5:
        raise ConfigError("S3_MULTIPART_CHUNK_MB: S3 parts must be at least 5 MB")
    secret = values["callback_secret"]
    if secret and not secret.startswith("whsec_"):
        raise ConfigError(
            "CALLBACK_SECRET=<hidden>: expected a Standard Webhooks secret starting with whsec_"
        )
    _check_roots_apart(values)
    for name in values["queues"]:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"DAEMON_QUEUES={','.join(values['queues'])!r}: bad queue name {name!r}")


def _check_roots_apart(values: Mapping[str, Any]) -> None:
    """Inputs, outputs and checkpoints live in separate parts of the bucket: no root of one use may
    contain or lie inside a root of another (`{owner_id}` standing for any UUID)."""
    uses = {
        "S3_INPUT_PREFIXES": values["s3_input_prefixes"],
        "S3_OUTPUT_PREFIXES": values["s3_output_prefixes"],
        "S3_PREFIX": (values["s3_prefix"] + "/",),
        "CHECKPOINT_PREFIX": (values["checkpoint_prefix"] + "/",),
    }
    names = list(uses)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            for a in uses[first]:
                for b in uses[second]:
                    if _roots_meet(a, b):
                        raise ConfigError(
                            f"{first} {a!r} overlaps {second} {b!r}: keep them in separate folders"
                        )


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _roots_meet(a: str, b: str) -> bool:
    """Whether one root could lie inside the other, segment by segment (roots end with '/')."""

    def same(x: str, y: str) -> bool:
        if OWNER_PLACEHOLDER in (x, y):
            other = y if x == OWNER_PLACEHOLDER else x
            return other == OWNER_PLACEHOLDER or bool(_UUID.fullmatch(other))
        return x == y

    return all(same(x, y) for x, y in zip(a.strip("/").split("/"), b.strip("/").split("/"), strict=False))


def secret_values(settings: Settings) -> Mapping[str, str]:
    """Values that must never appear in a log line."""
    pairs = {
        "SUPABASE_SERVICE_ROLE_KEY": settings.supabase_key,
        "CALLBACK_SECRET": settings.callback_secret,
        "SENTRY_DSN": settings.sentry_dsn,
        "REDIS_URL password": url_password(settings.redis_url),
    }
    return {k: v for k, v in pairs.items() if v}
