"""`scripts/bench_queue.py` runs end to end and prints its table. Timings are never asserted: the
benchmark reports them, CI machines are too noisy to hold them to a number."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from tests.fixtures_daemon import ROOT

pytestmark = pytest.mark.slow

ROWS = (
    "pickup p50 (ms)",
    "pickup p90 (ms)",
    "pickup p99 (ms)",
    "pickup max (ms)",
    "dequeue p50 (ms)",
    "fork+prep p50 (ms)",
    "throughput (jobs/s)",
)


def test_bench_queue_prints_both_columns_with_numbers() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_queue.py"), "--jobs", "5", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()

    header = next(line for line in lines if line.startswith("metric"))
    assert re.search(r"plain rq\s+ours\s+ours/plain", header), header

    for row in ROWS:
        line = next((line for line in lines if line.strip().startswith(row)), None)
        assert line is not None, f"row {row!r} missing:\n{done.stdout}"
        cells = line.strip()[len(row) :].replace("|", " ").replace("x", " ").split()
        plain, ours, ratio = (float(cell) for cell in cells)
        assert all(math.isfinite(v) and v > 0 for v in (plain, ours, ratio)), line

    assert "goal: our pickup p99 < 50 ms" in done.stdout
    assert "goal: our pickup <= plain rq's" in done.stdout
