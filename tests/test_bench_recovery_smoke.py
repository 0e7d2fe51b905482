"""`scripts/bench_recovery.py --quick` checkpoints models of 10k and 100k Gaussians to a loopback S3
and a local disk, requeues the job in a private Redis, resumes, and prints its table with numbers.
Timings are never asserted: the benchmark reports them, CI machines are too noisy to hold them to a
number."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from tests.fixtures_daemon import ROOT

pytestmark = pytest.mark.slow

SIZES = ("10k", "100k")
S3_ROWS = (
    "checkpoint size (MB)",
    "state capture (s)",
    "upload+commit (s)",
    "notice → durable + requeued (s)",
    "resume download+verify (s)",
    "restore (s)",
)
DISK_ROWS = ("checkpoint size (MB)", "state capture (s)", "restore (s)")


def columns(lines: list[str]) -> list[str]:
    """Column names in table order ("S3", "disk" per size), from the line under the size headers."""
    header = next((line for line in lines if line.startswith("metric ")), None)
    assert header is not None, "\n".join(lines)
    return header[len("metric") :].replace("|", " ").split()


def row_cells(lines: list[str], label: str) -> list[str]:
    line = next((line for line in lines if line.startswith(f"{label} ")), None)
    assert line is not None, f"row {label!r} missing:\n" + "\n".join(lines)
    return line[len(label) :].replace("|", " ").split()


def positive(cell: str) -> bool:
    value = float(cell)
    return math.isfinite(value) and value > 0


def test_bench_recovery_quick_prints_the_table_with_numbers() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_recovery.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()

    size_header = next((line for line in lines if "Gaussians" in line and "|" in line), "")
    assert [word for word in size_header.replace("|", " ").split() if word != "Gaussians"] == list(SIZES)
    names = columns(lines)
    assert names == ["S3", "disk"] * len(SIZES), names
    for label in S3_ROWS + DISK_ROWS:
        cells = row_cells(lines, label)
        assert len(cells) == len(names), (label, cells)
        wanted = [c for c, name in zip(cells, names, strict=True) if name == "S3" or label in DISK_ROWS]
        assert all(positive(c) for c in wanted), (label, cells)

    assert "check: all resumed states equal the captured ones" in done.stdout
    assert "goal: notice → durable + requeued < 15 s for 1M Gaussians:" in done.stdout
