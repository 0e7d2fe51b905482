"""`scripts/drill_hostile.py` runs the hostile cases of issue 13 against a live worker and prints what
happened to each: every case must hold (the script's exit status), and the table must name them all."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fixtures_daemon import ROOT

pytestmark = pytest.mark.slow

CASES = (
    "cross-tenant key",
    "id reuse (another owner)",
    "gzip bomb",
    "slow-loris callback receiver",
    "forged outbox item",
    "pickled checkpoint",
    "the worker served on",
)


def test_the_hostile_drill_holds_on_every_case():
    done = subprocess.run(
        [sys.executable, "scripts/drill_hostile.py"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    table = done.stdout
    assert done.returncode == 0, table + done.stderr[-3000:]
    rows = [line for line in table.splitlines() if " | " in line][1:]
    for case in CASES:
        row = next((r for r in rows if r.startswith(case)), None)
        assert row is not None, f"{case!r} missing:\n{table}"
        assert row.rstrip().endswith("yes"), row
    assert f"{len(CASES)}/{len(CASES)} held" in table
