"""`scripts/demo.py --kind mesh`, as a newcomer runs it: a private Redis, a generated CAD model served on
loopback, `python -m daemon enqueue`, a burst worker, and the report of the row and the outputs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fixtures_daemon import ROOT

pytestmark = pytest.mark.slow


def test_the_mesh_demo_runs_the_job_through_a_worker_and_reports_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SUPABASE_", "S3_", "SENTRY_"))}
    env |= {"DAEMON_ENV_FILE": str(tmp_path / "no.env"), "DAEMON_STATE_DIR": str(tmp_path / "state"),
            "DAEMON_OUTPUT_DIR": str(tmp_path / "outputs"), "DAEMON_WORK_DIR": str(tmp_path / "work"),
            "IMDS_URL": ""}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "scripts/demo.py", "--kind", "mesh", "--model", "cad"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    out = done.stdout
    assert "demo: read glb: 21,824 triangles, 400 primitives, 400 materials" in out, out
    assert "demo: model.glb: 21,824 triangles" in out and "demo:   model_lod1.glb" in out
    for name in (
        "model.glb",
        "model_lod0.glb",
        "model_lod1.glb",
        "preview.glb",
        "thumbnail.png",
        "manifest.json",
    ):
        assert f"  {name} " in out, out
