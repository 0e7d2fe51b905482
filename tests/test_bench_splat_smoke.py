"""`scripts/bench_splat.py --quick` runs the whole splat job per setting and prints both tables with
numbers. Timings are never asserted: the benchmark reports them, CI machines are too noisy to hold them
to a number."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from tests.fixtures_daemon import ROOT

pytestmark = pytest.mark.slow

SETTINGS = ("fast",)
POSITIVE_ROWS = ("final Gaussians", "final held-out PSNR", "peak RSS (MB)")


def row_cells(lines: list[str], label: str) -> list[str]:
    line = next((line for line in lines if line.startswith(f"{label} ")), None)
    assert line is not None, f"row {label!r} missing:\n" + "\n".join(lines)
    return line.split("|", 1)[1].split()


def test_bench_splat_quick_prints_both_tables_with_numbers() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_splat.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()

    header = next((line for line in lines if line.startswith("metric ")), None)
    assert header is not None, done.stdout
    assert header.split("|", 1)[1].split() == list(SETTINGS), header
    for label in POSITIVE_ROWS:
        values = [float(cell) for cell in row_cells(lines, label)]
        assert len(values) == len(SETTINGS), (label, values)
        assert all(math.isfinite(v) and v > 0 for v in values), (label, values)

    raster_header = next((line for line in lines if line.strip().startswith("size")), None)
    assert raster_header is not None and "speed-up" in raster_header, done.stdout
    raster_row = next((line for line in lines if line.strip().startswith("64x48")), None)
    assert raster_row is not None, done.stdout
    speedup = float(raster_row.split("|")[1].split()[2].rstrip("x"))
    assert math.isfinite(speedup) and speedup > 0, raster_row
