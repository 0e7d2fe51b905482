"""`scripts/demo.py --kind pointcloud`, as a newcomer runs it: a private Redis, a generated survey served on
loopback, `python -m daemon enqueue`, a burst worker, and the report of the row and the outputs. 150,000
points: enough LAZ chunks that py3dtiles' forked workers would deadlock in laspy's parallel decoder if
the job ran py3dtiles as it comes (tiles3d.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fixtures_daemon import ROOT

pytestmark = pytest.mark.slow


def test_the_pointcloud_demo_runs_the_job_through_a_worker_and_reports_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SUPABASE_", "S3_", "SENTRY_"))}
    env |= {"DAEMON_ENV_FILE": str(tmp_path / "no.env"), "DAEMON_STATE_DIR": str(tmp_path / "state"),
            "DAEMON_OUTPUT_DIR": str(tmp_path / "outputs"), "DAEMON_WORK_DIR": str(tmp_path / "work"),
            "IMDS_URL": ""}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "scripts/demo.py", "--kind", "pointcloud", "--points", "150000"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    out = done.stdout
    assert "demo: read laz (LAS 1.4, point format 7): 150,000 points, EPSG:32633" in out, out
    assert "demo: cloud.copc.laz: 150,000 points" in out and "placed on the globe: True" in out, out
    for name in ("cloud.copc.laz", "preview.png", "manifest.json", "tiles/"):
        assert f"  {name} " in out, out
