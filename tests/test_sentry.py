"""What reaches Sentry (daemon/telemetry/sentry.py): an error event and its breadcrumbs, sent by the real
SDK to a loopback ingest, carry no configured secret, no URL password and no presigned-URL signature
(issue 13), while still saying what went wrong."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

from tests.fixtures_daemon import ROOT

SUPABASE_KEY = "sb-service-role-secret-0123456789"
REDIS_PASSWORD = "hunter2-redis-password"
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"callback-secret-bytes-0123456789").decode()
PRESIGNED = (
    "https://bucket.s3.amazonaws.com/u1/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLEKEYID%2F20261204%2Fus-east-1&X-Amz-Signature=deadbeefcafe0123"
)

A_FAILING_JOB = """
import logging
import sentry_sdk
from daemon.config import load_settings
from daemon.telemetry.sentry import init_sentry

settings = load_settings()
init_sentry(settings)
url = {url!r}

def fetch(url, settings):
    spec = {{"inputs": [{{"url": url}}], "settings": repr(settings)}}  # a local that must not travel
    raise RuntimeError(f"GET {{url}} failed; Redis at {{settings.redis_url}}; key {{settings.supabase_key}}")

logging.getLogger("daemon.test").warning("fetching %s", url)  # a breadcrumb
try:
    fetch(url, settings)
except RuntimeError:
    sentry_sdk.capture_exception()
logging.getLogger("daemon.test").error("callback signing with %s failed", settings.callback_secret)
sentry_sdk.flush(10)
"""


def test_no_secret_or_signature_leaves_in_a_sentry_event(sentry_ingest, tmp_path):
    # Given a worker's settings full of secrets, and a job failing with a presigned URL in hand
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "SENTRY_", "REDIS_"))},
        "DAEMON_ENV_FILE": str(tmp_path / "no.env"),
        "SENTRY_DSN": sentry_ingest.dsn,
        "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0",
        "SUPABASE_URL": "http://127.0.0.1:1",
        "SUPABASE_SERVICE_ROLE_KEY": SUPABASE_KEY,
        "CALLBACK_SECRET": CALLBACK_SECRET,
        "SENTRY_ENVIRONMENT": "staging-eu",
    }
    # When it reports the exception and an error log line to Sentry (the real SDK, over HTTP)
    done = subprocess.run(
        [sys.executable, "-c", A_FAILING_JOB.format(url=PRESIGNED)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    crash = sentry_ingest.wait_for(lambda e: "exception" in e)
    logged = sentry_ingest.wait_for(lambda e: "callback signing" in json.dumps(e))
    sent = json.dumps([crash, logged])
    # Then both say what happened, with the URL's place kept
    assert "RuntimeError" in sent and "https://bucket.s3.amazonaws.com/u1/a.jpg" in sent
    assert "[Filtered]" in sent
    # And no secret, password, credential or signature is in them, nor the frame's locals
    for secret in (SUPABASE_KEY, REDIS_PASSWORD, CALLBACK_SECRET, "AKIAEXAMPLEKEYID", "deadbeefcafe0123"):
        assert secret not in sent, secret
    assert "vars" not in json.dumps(crash["exception"])
    # And both carry the configured environment
    assert crash["environment"] == logged["environment"] == "staging-eu"
