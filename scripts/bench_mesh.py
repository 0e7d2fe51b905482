#!/usr/bin/env python3
"""Mesh benchmark: our `mesh` job against the replaced worker's chain and `gltf-transform optimize`,
side by side in one run, on three generated assets of different character (daemon/samples/models.py):

- scan: a dense noisy closed surface, 1M triangles, one 4096 px JPEG texture (a photogrammetry scan);
- cad: 400 small untextured flat-shaded parts, each its own mesh, node and material (a CAD export);
- textures: 4 parts of a few thousand triangles with a 4096 px texture each, PNG and JPEG.

The three runs on each asset:
- "seed chain": what seed 003's `optimizeGLB` ran: `gltf-pipeline -d --draco.compressionLevel 7` on
  the model, then for each of 1M/100k/10k vertices `gltf-transform simplify --ratio target/1e6` and
  `gltf-pipeline -d`, and a 0.1% preview the same way (the same pinned npm packages as ours);
- "gltf-transform optimize": its CLI with default settings;
- "ours": the whole job, `python -m daemon run-local` (read, analyze, validation of the input and of
  every output, optimize, the LOD chain with its measured errors, the thumbnail in Chromium).

Each row: wall seconds (our row also the seconds without the thumbnail, which the others do not
make), the main model's bytes (seed: the Draco model; optimize: its output; ours: model.glb), every
output's bytes, the validator's errors over every output, the main model's geometric error against
the input (symmetric Hausdorff and chamfer distance as % of the bounding-box diagonal, 20k samples a
way, compressed files decoded first), and its triangles and largest texture.

    .venv/bin/python scripts/bench_mesh.py                  # the full sizes: a few minutes
    .venv/bin/python scripts/bench_mesh.py --scale 0.05     # quick look (smaller meshes and textures)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from local_job import local_env, serve  # noqa: E402

from daemon.handlers.mesh.geometry import load_mesh, surface_error  # noqa: E402
from daemon.handlers.mesh.tools import JS_DIR, run_tool  # noqa: E402
from daemon.samples import models  # noqa: E402

BIN = JS_DIR / "node_modules" / ".bin"
SEED_TARGETS = (1_000_000, 100_000, 10_000)
TIMEOUT_S = 3600


def make_assets(folder: Path, scale: float, names: list[str]) -> dict[str, Path]:
    """The assets at `scale` (triangles and parts × scale, texture sides × √scale), cached in `folder`."""
    side = lambda size: max(256, 1 << round(math.log2(size * math.sqrt(scale))))  # noqa: E731
    makers = {
        "scan": lambda: models.scan(triangles=int(1_000_000 * scale), texture_size=side(4096)),
        "cad": lambda: models.cad(parts=max(20, int(400 * min(1.0, scale * 4)))),
        "textures": lambda: models.textured_set(textures=4, texture_size=side(4096)),
    }
    paths = {}
    for name in names:
        path = folder / f"{name}-{scale:g}.glb"
        if not path.exists():
            started = time.monotonic()
            models.write_glb(makers[name](), str(path))
            print(f"made {path.name} in {time.monotonic() - started:.1f} s", file=sys.stderr)
        paths[name] = path
    return paths


# -- the three runs ----------------------------------------------------------------------------------------


def run(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}… failed: {(done.stderr or done.stdout)[-1500:]}")
    return done.stdout


def seed_chain(source: Path, out: Path) -> tuple[Path, list[Path]]:
    """seed 003's optimizeGLB: the Draco model, three LODs by its ratio rule and the preview."""
    pipeline, transform = str(BIN / "gltf-pipeline"), str(BIN / "gltf-transform")
    main = out / "model_draco.glb"
    run([pipeline, "-i", str(source), "-o", str(main), "-d", "--draco.compressionLevel", "7"])
    outputs = [main]
    for index, ratio in [*enumerate(t / 1_000_000 for t in SEED_TARGETS), ("preview", 0.001)]:
        level = out / (f"lod{index}.glb" if index != "preview" else "preview.glb")
        run([transform, "simplify", str(source), str(level), "--ratio", str(ratio)])
        run([pipeline, "-i", str(level), "-o", str(level), "-d"])
        outputs.append(level)
    return main, outputs


def gltf_transform_optimize(source: Path, out: Path) -> tuple[Path, list[Path]]:
    main = out / "optimized.glb"
    run([str(BIN / "gltf-transform"), "optimize", str(source), str(main)])
    return main, [main]


def ours(source: Path, out: Path, timings: dict[str, float]) -> tuple[Path, list[Path]]:
    env = local_env(out, out / "state")
    with serve(source.parent) as base:
        spec = {"spec_version": 1, "job_id": "bench-mesh", "kind": "mesh",
                "inputs": [{"url": f"{base}/{source.name}", "name": source.name}]}  # fmt: skip
        answer = json.loads(run([sys.executable, "-m", "daemon", "run-local", json.dumps(spec), "--out",
                                 str(out / "out")], cwd=ROOT, env=env))  # fmt: skip
    if answer.get("status") != "completed":
        raise RuntimeError(f"our job failed: {answer.get('error')}")
    timings.update(answer["result"]["timings_s"])
    folder = out / "out" / "bench-mesh"
    return folder / "model.glb", sorted(p for p in folder.iterdir() if p.suffix == ".glb")


# -- measuring ---------------------------------------------------------------------------------------------


def decoded(path: Path, scratch: Path) -> Path:
    """`path` with Draco or meshopt undone, for trimesh to read."""
    out = scratch / f"decoded-{path.parent.name}-{path.name}"
    run_tool("compress", {"path": str(path), "out": str(out), "method": "none"})
    return out


def measure(source_mesh: Any, main: Path, outputs: list[Path], scratch: Path) -> dict[str, Any]:
    errors = sum(run_tool("validate", {"path": str(p)})["errors"] for p in outputs)
    facts = run_tool("analyze", {"path": str(main)})
    error = surface_error(source_mesh, load_mesh(decoded(main, scratch)))
    largest = max(((t["width"] or 0, t["mime_type"]) for t in facts["textures"]), default=(0, "-"))
    return {
        "bytes": main.stat().st_size,
        "all_bytes": sum(p.stat().st_size for p in outputs),
        "validator_errors": errors,
        "hausdorff_pct": 100 * error["hausdorff"],
        "chamfer_pct": 100 * error["chamfer"],
        "triangles": facts["triangles"],
        "texture": f"{largest[0]} {largest[1].removeprefix('image/')}" if largest[0] else "-",
    }


RUNS = ("seed chain", "gltf-transform optimize", "ours")


def bench(name: str, source: Path, scratch: Path, repeat: int) -> list[dict[str, Any]]:
    """`repeat` rounds of the three runs, interleaved (a noisy machine slows all three alike): each
    row's time is the median over the rounds and its "× seed" the median of the rounds' own ratios;
    the outputs measured are the last round's (every round writes the same files)."""
    walls: dict[str, list[float]] = {label: [] for label in RUNS}
    thumbnails: list[float] = []
    written: dict[str, tuple[Path, list[Path]]] = {}
    for _ in range(repeat):
        for label in RUNS:
            out = Path(tempfile.mkdtemp(dir=scratch, prefix=label.split()[0] + "-"))
            timings: dict[str, float] = {}
            started = time.monotonic()
            written[label] = RUNNERS[label](source, out, timings)
            walls[label].append(time.monotonic() - started)
            if label == "ours":
                thumbnails.append(timings.get("thumbnail", 0.0))
            print(f"{name}: {label} done in {walls[label][-1]:.1f} s", file=sys.stderr)
    source_mesh = load_mesh(source)
    seed = walls["seed chain"]
    rows = []
    for label in RUNS:
        row = {"asset": name, "run": label, **_times(walls[label], seed),
               **measure(source_mesh, *written[label], scratch)}  # fmt: skip
        if label == "ours":
            no_thumbnail = [
                wall - thumbnail for wall, thumbnail in zip(walls[label], thumbnails, strict=True)
            ]
            row["no_thumbnail"] = _times(no_thumbnail, seed)
        rows.append(row)
    return rows


def _times(walls: list[float], seed: list[float]) -> dict[str, Any]:
    ratios = [wall / base for wall, base in zip(walls, seed, strict=True)]
    return {"wall_s": statistics.median(walls), "ratio": statistics.median(ratios), "ratios": ratios}


RUNNERS = {
    "seed chain": lambda source, out, _: seed_chain(source, out),
    "gltf-transform optimize": lambda source, out, _: gltf_transform_optimize(source, out),
    "ours": ours,
}


def print_table(rows: list[dict[str, Any]], repeat: int) -> None:
    print("| asset | run | wall s | × seed | model bytes | all outputs | validator errors | Hausdorff % | "
          "chamfer % | triangles | largest texture |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    spread = (lambda t: f" ({min(t['ratios']):.2f}–{max(t['ratios']):.2f})") if repeat > 1 else (lambda t: "")
    for row in rows:
        wall, ratio = f"{row['wall_s']:.1f}", f"{row['ratio']:.2f}{spread(row)}"
        if "no_thumbnail" in row:
            bare = row["no_thumbnail"]
            wall += f" ({bare['wall_s']:.1f} w/o thumbnail)"
            ratio += f"; w/o thumbnail {bare['ratio']:.2f}{spread(bare)}"
        print(
            f"| {row['asset']} | {row['run']} | {wall} | {ratio} | "
            f"{row['bytes']:,} | {row['all_bytes']:,} | {row['validator_errors']} | "
            f"{row['hausdorff_pct']:.3f} | {row['chamfer_pct']:.4f} | {row['triangles']:,} | "
            f"{row['texture']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="asset size factor (1 = full)")
    parser.add_argument("--assets", default="scan,cad,textures", help="comma-separated: scan, cad, textures")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three runs (medians shown)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench-mesh-assets")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    assets = make_assets(args.cache, args.scale, args.assets.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as scratch:
        for name, path in assets.items():
            rows += bench(name, path, Path(scratch), args.repeat)
    print(f"\nmesh benchmark, scale {args.scale:g}, {os.cpu_count()} CPUs, median of {args.repeat} rounds\n")
    print_table(rows, args.repeat)


if __name__ == "__main__":
    main()
