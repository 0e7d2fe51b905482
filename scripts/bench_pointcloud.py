#!/usr/bin/env python3
"""Point-cloud benchmark: our `pointcloud` job against `py3dtiles convert` alone, side by side in one run,
on generated drone surveys (daemon/samples/clouds.py: terrain, houses, trees, 0.2% noise; UTM 33N LAZ)
of 1M, 10M and 50M points.

The runs on each survey:
- "read → analyze → COPC": our job with cleaning, ground and 3D Tiles off (`outlier`/`elm` null,
  `ground: none`, `outputs: ["copc"]`): the streaming path's throughput;
- "whole job": our job with its defaults (outliers, ELM, CSF ground, COPC, 3D Tiles, preview);
- "py3dtiles convert": the replaced worker's tiling step alone on the same LAZ (`--jobs` = CPUs; run
  through our wrapper, scripts/py3dtiles_cli.py: as it comes it deadlocks on LAZ).

Each row: wall seconds, points per second, the peak resident memory of the largest process and of all
of the run's processes together (sampled every 0.2 s), and for our runs the seconds per stage.
Targets (issue 16): peak RSS flat in input size and ≤ 1.5 GB at 50M points; ≥ 1M points/s for read →
analyze → COPC; the whole job within 1.5× `py3dtiles convert` alone.

    .venv/bin/python scripts/bench_pointcloud.py                    # 1M, 10M, 50M: about half an hour
    .venv/bin/python scripts/bench_pointcloud.py --points 1000000   # one size
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from local_job import local_env, serve  # noqa: E402

from daemon.samples import cloud_files, clouds  # noqa: E402

FAST = {"outlier": None, "elm": None, "ground": "none", "outputs": ["copc"]}
CLI = str(ROOT / "scripts" / "py3dtiles_cli.py")


def survey(folder: Path, points: int) -> Path:
    path = folder / f"survey-{points}.laz"
    if not path.exists():
        started = time.monotonic()
        cloud_files.write_las(clouds.survey_chunks(points, seed=3), path)
        print(f"made {path.name} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return path


class PeakMemory:
    """The peak RSS of a process and its descendants: the largest one's and their sum."""

    def __init__(self, pid: int) -> None:
        self.root, self.largest, self.total = psutil.Process(pid), 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            try:
                family = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            sizes = []
            for process in family:
                with suppress(psutil.Error):
                    sizes.append(process.memory_info().rss)
            if sizes:
                self.largest, self.total = max(self.largest, max(sizes)), max(self.total, sum(sizes))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def measured(argv: list[str], env: dict[str, str]) -> tuple[float, PeakMemory, str]:
    started = time.monotonic()
    child = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    memory = PeakMemory(child.pid)
    stdout, stderr = child.communicate()
    memory.stop()
    if child.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed: {stderr[-2000:]}")
    return time.monotonic() - started, memory, stdout


def ours(source: Path, scratch: Path, params: dict[str, Any], cache: Path) -> tuple[float, PeakMemory, dict]:
    out = Path(tempfile.mkdtemp(dir=scratch))
    env = local_env(out, cache, DOWNLOAD_MAX_BYTES=str(2**40), JOB_INPUT_MAX_BYTES=str(2**40))
    with serve(source.parent) as base:
        spec = {"spec_version": 1, "job_id": "bench-pointcloud", "kind": "pointcloud",
                "inputs": [{"url": f"{base}/{source.name}"}], "params": params}  # fmt: skip
        wall, memory, stdout = measured(
            [sys.executable, "-m", "daemon", "run-local", json.dumps(spec), "--out", str(out / "out")], env
        )
    answer = json.loads(stdout)
    if answer.get("status") != "completed":
        raise RuntimeError(f"our job failed: {answer.get('error')}")
    return wall, memory, answer["result"]["timings_s"]


def py3dtiles_alone(source: Path, scratch: Path, cache: Path) -> tuple[float, PeakMemory]:
    out = Path(tempfile.mkdtemp(dir=scratch)) / "tiles"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache / "numba-cache")}
    argv = [sys.executable, CLI, "convert", str(source), "--out", str(out), "--jobs", str(os.cpu_count())]
    wall, memory, _ = measured(argv, env)
    return wall, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, action="append", help="survey size (repeatable)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench-pointcloud")
    args = parser.parse_args()
    sizes = args.points or [1_000_000, 10_000_000, 50_000_000]
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pointcloud-") as scratch:
        py3dtiles_alone(survey(args.cache, 10_000), Path(scratch), args.cache)  # numba compiles once
        for points in sizes:
            source = survey(args.cache, points)
            wall, memory, timings = ours(source, Path(scratch), FAST, args.cache)
            rows.append((points, "read → analyze → COPC", wall, memory, timings))
            wall, memory, timings = ours(source, Path(scratch), {}, args.cache)
            rows.append((points, "whole job", wall, memory, timings))
            wall, memory = py3dtiles_alone(source, Path(scratch), args.cache)
            rows.append((points, "py3dtiles convert", wall, memory, {}))
            print(f"{points:,} points done", file=sys.stderr)
    print(f"\npoint-cloud benchmark, {os.cpu_count()} CPUs\n")
    print("| points | run | wall s | points/s | × py3dtiles | peak RSS largest MB | peak RSS all MB | "
          "seconds per stage |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    alone = {points: wall for points, run, wall, _, _ in rows if run == "py3dtiles convert"}
    for points, run, wall, memory, timings in rows:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "download")
        print(f"| {points:,} | {run} | {wall:.1f} | {points / wall:,.0f} | {wall / alone[points]:.2f} | "
              f"{memory.largest / 2**20:,.0f} | {memory.total / 2**20:,.0f} | {stages} |")  # fmt: skip


if __name__ == "__main__":
    main()
