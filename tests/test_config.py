"""Settings: defaults, a ConfigError per kind of bad value, secrets kept out of errors, `.env` precedence."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.config import VARIABLES, Settings, load_settings
from daemon.errors import ConfigError
from tests.fixtures_daemon import ROOT


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with nothing set but a `.env` path that does not exist (so the tree's own `.env`,
    if someone has one, never leaks into a test)."""
    return {"DAEMON_ENV_FILE": str(tmp_path / "absent.env")}


def config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    return str(caught.value)


def named_variable(message: str) -> str:
    """The variable a ConfigError message starts with (`NAME=value: why` or `NAME: why`)."""
    return message.split(":", 1)[0].split("=", 1)[0]


# -- defaults --------------------------------------------------------------------------------------------


def test_defaults_parse_into_a_local_setup(env):
    # Given an empty environment
    # When the settings are loaded
    settings = load_settings(env)

    # Then every default parsed, and the daemon runs embedded: local rows and outputs, no secrets
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.queues == ("high", "default", "low")
    assert settings.storage_backend == "local" and settings.s3_bucket is None
    assert settings.s3_prefix == "jobs" and settings.s3_multipart_chunk_mb == 16
    assert settings.supabase_url is None and settings.supabase_key is None
    assert not settings.supabase_enabled
    assert settings.callback_secret is None and settings.sentry_dsn is None
    assert settings.url_allow_networks == ()
    assert settings.download_max_redirects == 5 and settings.download_max_bytes == 4 << 30
    assert settings.progress_min_interval_s == 1.0 and settings.heartbeat_interval_s == 15.0
    assert settings.log_level == "info"
    assert settings.work_dir == Path("var/work")
    assert settings.worker_name == f"{socket.gethostname()}.{os.getpid()}"


# -- bad values ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        pytest.param("DAEMON_MONITOR_INTERVAL_S", "ten", id="int-not-a-number"),
        pytest.param("JOB_MAX_ATTEMPTS", "0", id="int-not-positive"),
        pytest.param("DOWNLOAD_MAX_BYTES", "1.5", id="int-fraction"),
        pytest.param("DAEMON_STOP_TIMEOUT_S", "soon", id="float-not-a-number"),
        pytest.param("CALLBACK_TIMEOUT_S", "-1", id="float-negative"),
        pytest.param("PROGRESS_MIN_INTERVAL_S", "nan", id="float-nan"),
        pytest.param("LOG_LEVEL", "verbose", id="choice-log-level"),
        pytest.param("STORAGE_BACKEND", "gcs", id="choice-storage"),
        pytest.param("REDIS_URL", "http://127.0.0.1:6379/0", id="url-scheme-redis"),
        pytest.param("SUPABASE_URL", "ftp://db.example.com", id="url-scheme-supabase"),
        pytest.param("S3_ENDPOINT_URL", "s3.example.com", id="url-without-scheme"),
        pytest.param("URL_ALLOW_NETWORKS", "10.0.0.0/33", id="cidr-prefix"),
        pytest.param("URL_ALLOW_NETWORKS", "127.0.0.1/32,intranet", id="cidr-second-item"),
        pytest.param("DAEMON_QUEUES", "high,bad queue", id="queue-name-space"),
        pytest.param("DAEMON_QUEUES", "high,rq:queue:x", id="queue-name-colon"),
        pytest.param("DAEMON_QUEUES", " , ", id="queue-list-empty"),
        pytest.param("S3_MULTIPART_CHUNK_MB", "4", id="s3-part-below-5mb"),
    ],
)
def test_bad_value_stops_with_the_variable_named(env, name, raw):
    # Given one variable with a bad value
    env[name] = raw

    # When the settings are loaded
    message = config_error(env)

    # Then start-up stops with a ConfigError that names that variable first
    assert named_variable(message) == name, message


def test_negative_redirect_limit_stops_start_up(env):
    # Given a negative redirect limit
    env["DOWNLOAD_MAX_REDIRECTS"] = "-1"

    # When / Then start-up stops, naming it (rather than every job failing at its first download)
    assert named_variable(config_error(env)) == "DOWNLOAD_MAX_REDIRECTS"


def test_s3_backend_without_bucket_names_the_bucket(env):
    # Given S3 storage chosen but no bucket
    env["STORAGE_BACKEND"] = "s3"

    # When / Then the error names S3_BUCKET
    assert named_variable(config_error(env)) == "S3_BUCKET"

    # And with a bucket the same setting is accepted
    env["S3_BUCKET"] = "outputs"
    assert load_settings(env).storage_backend == "s3"


@pytest.mark.parametrize(
    "given",
    [
        {"SUPABASE_URL": "https://xyz.supabase.co"},
        {"SUPABASE_SERVICE_ROLE_KEY": "service-role-key-value"},
    ],
    ids=["url-without-key", "key-without-url"],
)
def test_supabase_url_and_key_go_together(env, given):
    # Given only one half of the Supabase pair
    env.update(given)

    # When the settings are loaded
    message = config_error(env)

    # Then the error names the key variable and says both are needed, never showing the key
    assert named_variable(message) == "SUPABASE_SERVICE_ROLE_KEY"
    assert "SUPABASE_URL" in message
    assert "service-role-key-value" not in message


# -- secrets -------------------------------------------------------------------------------------------


def test_bad_secret_is_hidden_in_the_error(env):
    # Given a callback secret in the wrong format
    env["CALLBACK_SECRET"] = "my-very-private-hmac-key"

    # When the settings are loaded
    message = config_error(env)

    # Then the variable is named but its value is shown as <hidden>
    assert named_variable(message) == "CALLBACK_SECRET"
    assert "<hidden>" in message
    assert "my-very-private-hmac-key" not in message


def test_password_in_a_bad_redis_url_is_not_echoed(env):
    # Given a Redis URL with a password and a wrong scheme
    env["REDIS_URL"] = "http://:hunter2-redis-password@redis.internal:6379/0"

    # When the settings are loaded
    message = config_error(env)

    # Then REDIS_URL is named but the password is not in the message
    assert named_variable(message) == "REDIS_URL"
    assert "hunter2-redis-password" not in message


def test_secrets_are_not_in_the_settings_repr(env):
    # Given every secret set
    env.update(
        SUPABASE_URL="https://xyz.supabase.co",
        SUPABASE_SERVICE_ROLE_KEY="service-role-key-value",
        CALLBACK_SECRET="whsec_c2VjcmV0LWtleS12YWx1ZQ==",
        SENTRY_DSN="https://publickey123@o1.ingest.sentry.io/42",
    )

    # When the settings are printed (a debugger, an exception's locals)
    shown = repr(load_settings(env))

    # Then none of them appears
    for secret in ("service-role-key-value", "whsec_c2VjcmV0", "publickey123"):
        assert secret not in shown


# -- the .env file --------------------------------------------------------------------------------------


def test_env_file_is_read_and_the_process_environment_wins(tmp_path):
    # Given a .env file named by DAEMON_ENV_FILE, and a process environment that sets one of its variables
    env_file = tmp_path / "daemon.env"
    env_file.write_text("S3_PREFIX=from-file\nLOG_LEVEL=debug\nJOB_MAX_ATTEMPTS=7\n")
    environ = {"DAEMON_ENV_FILE": str(env_file), "LOG_LEVEL": "warning"}

    # When the settings are loaded
    settings = load_settings(environ)

    # Then the file's values apply where the environment is silent, and the environment wins elsewhere
    assert settings.s3_prefix == "from-file"
    assert settings.job_max_attempts == 7
    assert settings.log_level == "warning"


def test_bad_value_in_the_env_file_is_named_too(tmp_path):
    # Given a .env file with a bad value
    env_file = tmp_path / "daemon.env"
    env_file.write_text("HEARTBEAT_INTERVAL_S=often\n")

    # When / Then the error names the variable, as for the process environment
    assert named_variable(config_error({"DAEMON_ENV_FILE": str(env_file)})) == "HEARTBEAT_INTERVAL_S"


# -- every variable is documented and used ---------------------------------------------------------------

SAMPLES: dict[str, tuple[str, Any]] = {
    "REDIS_URL": ("rediss://cache.internal:6380/2", "rediss://cache.internal:6380/2"),
    "DAEMON_QUEUES": ("gpu-a,gpu_b", ("gpu-a", "gpu_b")),
    "DAEMON_WORKER_NAME": ("gpu-7", "gpu-7"),
    "DAEMON_MONITOR_INTERVAL_S": ("11", 11),
    "DAEMON_MAINTENANCE_INTERVAL_S": ("21", 21),
    "DAEMON_STOP_TIMEOUT_S": ("91.5", 91.5),
    "JOB_MAX_ATTEMPTS": ("4", 4),
    "JOB_RETRY_BACKOFF_S": ("31", 31),
    "DAEMON_WORK_DIR": ("/srv/work", Path("/srv/work")),
    "DAEMON_STATE_DIR": ("/srv/state", Path("/srv/state")),
    "STORAGE_BACKEND": ("s3", "s3"),
    "DAEMON_OUTPUT_DIR": ("/srv/out", Path("/srv/out")),
    "S3_BUCKET": ("bucket-x", "bucket-x"),
    "S3_PREFIX": ("/captures/", "captures"),
    "S3_INPUT_PREFIXES": ("in/{owner_id},shared/", ("in/{owner_id}/", "shared/")),
    "S3_OUTPUT_PREFIXES": ("deliveries/{owner_id}/", ("deliveries/{owner_id}/",)),
    "S3_ENDPOINT_URL": ("http://127.0.0.1:8333", "http://127.0.0.1:8333"),
    "AWS_REGION": ("eu-west-3", "eu-west-3"),
    "S3_MULTIPART_THRESHOLD_MB": ("65", 65),
    "S3_MULTIPART_CHUNK_MB": ("17", 17),
    "DOWNLOAD_MAX_BYTES": ("12345", 12345),
    "JOB_INPUT_MAX_BYTES": ("1000000", 1000000),
    "DOWNLOAD_TIMEOUT_S": ("601", 601.0),
    "DOWNLOAD_MAX_REDIRECTS": ("2", 2),
    "URL_ALLOW_NETWORKS": ("127.0.0.1/32", (ipaddress.ip_network("127.0.0.1/32"),)),
    "SUPABASE_URL": ("https://b.supabase.co", "https://b.supabase.co"),
    "SUPABASE_SERVICE_ROLE_KEY": ("key-two", "key-two"),
    "SUPABASE_JOBS_TABLE": ("jobs_v2", "jobs_v2"),
    "PROGRESS_MIN_INTERVAL_S": ("0.25", 0.25),
    "HEARTBEAT_INTERVAL_S": ("16", 16.0),
    "CALLBACK_SECRET": ("whsec_dGVzdA==", "whsec_dGVzdA=="),
    "CALLBACK_TIMEOUT_S": ("11", 11.0),
    "CALLBACK_MAX_AGE_S": ("3600", 3600),
    "OUTBOX_POLL_INTERVAL_S": ("0.5", 0.5),
    "LOG_LEVEL": ("DEBUG", "debug"),
    "JOB_MAX_PREEMPTIONS": ("5", 5),
    "CHECKPOINT_PREFIX": ("/ckpt/", "ckpt"),
    "CHECKPOINT_INTERVAL_S": ("60", 60.0),
    "SFM_THREADS": ("1", 1),
    "POINTCLOUD_PROCESSES": ("3", 3),
    "POINTCLOUD_TILE_POINTS": ("250000", 250_000),
    "CHROMIUM_PATH": (
        "/opt/ms-playwright/chromium_headless_shell-1200/chrome-linux/headless_shell",
        "/opt/ms-playwright/chromium_headless_shell-1200/chrome-linux/headless_shell",
    ),
    "IMDS_URL": ("http://127.0.0.1:1338", "http://127.0.0.1:1338"),
    "SPOT_POLL_INTERVAL_S": ("1", 1.0),
    "DAEMON_HEALTH_BIND": ("0.0.0.0", "0.0.0.0"),
    "DAEMON_HEALTH_PORT": ("9471", 9471),
    "DAEMON_HEALTH_STALE_S": ("30", 30.0),
    "DAEMON_METRICS_DIR": ("/var/lib/capture-daemon/metrics-0", "/var/lib/capture-daemon/metrics-0"),
    "AUTOSCALING_GROUP": ("capture-gpu", "capture-gpu"),
    "CLOUDWATCH_NAMESPACE": ("Staging/Capture", "Staging/Capture"),
    "FLEET_METRICS_INTERVAL_S": ("30", 30.0),
    "SCALE_IN_PROTECTION": ("false", False),
    "SENTRY_DSN": ("https://k@o1.ingest.sentry.io/1", "https://k@o1.ingest.sentry.io/1"),
    "SENTRY_ENVIRONMENT": ("staging", "staging"),
}
"""For each variable, a valid non-default raw value and what it must become in Settings."""

COMPANIONS: dict[str, dict[str, str]] = {
    "STORAGE_BACKEND": {"S3_BUCKET": "bucket-x"},
    "SUPABASE_URL": {"SUPABASE_URL": "https://a.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "key-one"},
    "SUPABASE_SERVICE_ROLE_KEY": {
        "SUPABASE_URL": "https://a.supabase.co",
        "SUPABASE_SERVICE_ROLE_KEY": "key-one",
    },
}
"""Variables that cannot change alone: what must already be set for the change to be valid."""


def test_every_variable_has_a_doc_and_a_sample():
    # Given the variables the README table is generated from
    names = [var.name for var in VARIABLES]

    # Then each is declared once, documented, and covered by the mapping test below
    assert len(names) == len(set(names))
    assert all(var.doc.strip() for var in VARIABLES)
    assert set(names) == set(SAMPLES), "add a sample for a new variable"
    assert {var.name for var in VARIABLES if var.secret} == {
        "SUPABASE_SERVICE_ROLE_KEY",
        "CALLBACK_SECRET",
        "SENTRY_DSN",
    }


@pytest.mark.parametrize("name", [var.name for var in VARIABLES])
def test_every_variable_reaches_exactly_one_settings_field(env, name):
    # Given a valid environment, and the same with one variable changed
    before_env = {**env, **COMPANIONS.get(name, {})}
    raw, expected = SAMPLES[name]
    after_env = {**before_env, name: raw}

    # When both are loaded
    before, after = load_settings(before_env), load_settings(after_env)

    # Then exactly one Settings field changed, to the parsed value (nothing is silently ignored)
    changed = {
        f.name: getattr(after, f.name)
        for f in dataclasses.fields(Settings)
        if getattr(before, f.name) != getattr(after, f.name)
    }
    assert list(changed.values()) == [expected], changed


def test_the_settings_repr_shows_no_secret(tmp_path):
    # Given settings with every secret set, and a Redis URL with a password
    settings = load_settings(
        {
            "DAEMON_ENV_FILE": str(tmp_path / "no.env"),
            "REDIS_URL": "redis://:redis-pw-123@cache.internal:6379/0",
            "SUPABASE_URL": "https://db.example.co",
            "SUPABASE_SERVICE_ROLE_KEY": "service-role-key-456",
            "SENTRY_DSN": "https://sentrykey789@o1.ingest.sentry.io/42",
        }
    )
    # When it is shown
    shown = repr(settings)
    # Then the settings are there, the secrets are not
    assert "redis://:[Filtered]@cache.internal:6379/0" in shown and "https://db.example.co" in shown
    for secret in ("redis-pw-123", "service-role-key-456", "sentrykey789"):
        assert secret not in shown, secret


def test_the_worker_exits_78_on_bad_configuration(tmp_path):
    # Given a worker started with a value that does not parse (as systemd would start it)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "DAEMON_"))},
        "DAEMON_ENV_FILE": str(tmp_path / "no.env"),
        "JOB_MAX_ATTEMPTS": "0",
    }
    # When it starts
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "worker"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # Then it exits with EX_CONFIG (the unit's RestartPreventExitStatus=78 stops a restart loop), naming
    # the variable, before touching Redis
    assert done.returncode == 78, done.stderr
    assert done.stderr.startswith("configuration error: JOB_MAX_ATTEMPTS")


# -- tenant roots ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"S3_INPUT_PREFIXES": "jobs/"}, "S3_INPUT_PREFIXES 'jobs/' overlaps S3_PREFIX 'jobs/'"),
        ({"S3_INPUT_PREFIXES": "checkpoints/old/"}, "overlaps CHECKPOINT_PREFIX 'checkpoints/'"),
        ({"S3_OUTPUT_PREFIXES": "uploads/{owner_id}/out/"}, "S3_INPUT_PREFIXES 'uploads/' overlaps"),
        (
            {"S3_PREFIX": "ckpt", "CHECKPOINT_PREFIX": "ckpt/v1"},
            "S3_PREFIX 'ckpt/' overlaps CHECKPOINT_PREFIX",
        ),
        (
            {
                "S3_INPUT_PREFIXES": "{owner_id}/",
                "S3_OUTPUT_PREFIXES": "0b5c7d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e/",
            },
            "S3_INPUT_PREFIXES '{owner_id}/' overlaps S3_OUTPUT_PREFIXES",
        ),
        ({"S3_INPUT_PREFIXES": "up/../jobs/"}, "segments must be names"),
        ({"S3_OUTPUT_PREFIXES": "out/{owner_id}-x/"}, "segments must be names"),
    ],
)
def test_roots_of_different_uses_must_not_overlap(env, change, message):
    # When the input, output, default-output and checkpoint roots could share a key
    error = config_error({**env, **change})

    # Then start-up stops, naming both
    assert message in str(error)


def test_per_owner_roots_side_by_side_are_apart(env):
    # Given each owner's inputs and outputs in two folders of the owner's own
    settings = load_settings(
        {**env, "S3_INPUT_PREFIXES": "{owner_id}/in", "S3_OUTPUT_PREFIXES": "{owner_id}/out"}
    )

    # Then they load, each a folder
    assert settings.s3_input_prefixes == ("{owner_id}/in/",)
    assert settings.s3_output_prefixes == ("{owner_id}/out/",)
