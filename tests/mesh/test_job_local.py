"""The mesh kind's stages end to end in `run-local` (a real download from a loopback file server, the
Node tools, trimesh and Chromium): every output present and valid, the LOD chain within 5% of its
targets with errors growing along it; a rerun over the kept folder resumes after the finished stages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.handlers.mesh.tools import run_tool
from tests import meshes
from tests.fixtures_daemon import ROOT, run_local

OUTPUTS = {"manifest.json", "model.glb", "model_lod0.glb", "model_lod1.glb", "preview.glb", "thumbnail.png",
           "thumbnail.webp"}  # fmt: skip


def test_a_textured_model_becomes_compressed_lods_and_a_thumbnail_and_resumes(
    daemon_env, file_server, tmp_path
):
    # Given a textured sphere (a 1024 px texture) served over HTTP, and a kept work folder
    glb = meshes.textured_sphere(tmp_path / "sphere.glb", segments=48, texture_size=1024)
    url = file_server.add("mesh-sphere.glb", glb.read_bytes())
    env = {**daemon_env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    spec = {"spec_version": 1, "job_id": "mesh-local-1", "kind": "mesh", "inputs": [{"url": url}],
            "params": {"lod_targets": [0.5, 0.1], "max_texture_size": 512}}  # fmt: skip
    work, out = tmp_path / "kept", tmp_path / "out"
    # When it runs until the LODs are made, then again over the same folder to the end
    ended, _ = run_local(env, spec, "--workdir", str(work), "--until", "lods")
    assert ended["status"] == "stopped" and ended["after_stage"] == "lods"
    _an_output_the_validator_rejects_never_leaves(env, spec, work, tmp_path / "tampered")
    ended, logs = run_local(env, spec, "--workdir", str(work), "--out", str(out))
    # Then the second run reused the finished stages and made the rest
    assert ended["status"] == "completed", logs[-3000:]
    for stage in ("read", "analyze", "optimize", "lods"):
        assert f"{stage} finished in an earlier run over this folder" in logs
    folder = out / "mesh-local-1"
    assert {p.name for p in folder.iterdir()} == OUTPUTS
    manifest = json.loads((folder / "manifest.json").read_text())
    # And the analysis says what the model is
    analysis = manifest["analysis"]
    assert analysis["watertight"] and analysis["validator"]["errors"] == 0
    assert analysis["textures"][0]["width"] == 1024 and analysis["unit_warning"] is None
    # And every GLB passes the validator, Draco-compressed, its texture WebP: 512 px (max_texture_size)
    # in the full model and the finest level, halved in the next, 256 px in the preview
    widths = {"model.glb": 512, "model_lod0.glb": 512, "model_lod1.glb": 256, "preview.glb": 256}
    for name, width in widths.items():
        assert run_tool("validate", {"path": str(folder / name)})["errors"] == 0, name
        facts = run_tool("analyze", {"path": str(folder / name)})
        assert "KHR_draco_mesh_compression" in facts["extensions_used"], name
        assert [(t["mime_type"], t["width"]) for t in facts["textures"]] == [("image/webp", width)], name
    # And the LOD chain meets its targets, its error growing along it
    triangles = manifest["optimized"]["triangles"]
    levels = manifest["lods"]["levels"]
    assert [level["name"] for level in levels] == ["model_lod0.glb", "model_lod1.glb", "preview.glb"]
    for level, share in zip(levels[:2], (0.5, 0.1), strict=True):
        assert level["triangles"] == pytest.approx(share * triangles, rel=0.05)
    assert levels[2]["triangles"] == pytest.approx(200, rel=0.05)  # 0.1% of 9k is below the floor
    errors = [level["hausdorff"] for level in levels]
    assert errors == sorted(errors) and errors[0] > 0
    assert manifest["thumbnail"]["size"] == 512 and manifest["thumbnail"]["triangles_drawn"] > 0
    # And the validator's verdict on each output, taken as it was written, is in the manifest
    for record in (manifest["optimized"], *levels):
        assert record["validator"]["errors"] == 0


def _an_output_the_validator_rejects_never_leaves(env, spec, work: Path, copy: Path) -> None:
    """A copy of the kept folder whose preview.glb is cut short, its record without the validator's
    verdict (as a worker of an earlier version wrote it): export validates it and refuses."""
    shutil.copytree(work, copy)
    (preview,) = copy.rglob("lods/preview.glb")
    preview.write_bytes(preview.read_bytes()[: preview.stat().st_size // 2])
    (record_path,) = copy.rglob("stages/lods.json")
    record = json.loads(record_path.read_text())
    assert all(level.pop("validator")["errors"] == 0 for level in record["levels"])
    record_path.write_text(json.dumps(record))
    ended, logs = run_local(env, spec, "--workdir", str(copy), "--out", str(copy / "out"))
    assert ended["status"] == "failed", logs[-3000:]
    assert ended["error"]["code"] == "invalid_output" and "preview.glb" in ended["error"]["message"]


PEAK_RSS_BUDGET_MB = 1536
"""The largest process of a 10⁶-triangle job (measured: 640-875 MB, the job's Python with the model and
its AABB tree) must stay well inside one worker's share of an instance's memory."""


def test_a_million_triangle_scan_runs_within_its_memory_budget(daemon_env, file_server, tmp_path):
    from daemon.samples import models

    # Given a generated scan of 10⁶ triangles with a 1024 px texture
    models.write_glb(models.scan(triangles=1_000_000, texture_size=1024), str(tmp_path / "scan.glb"))
    url = file_server.add("mesh-scan-1m.glb", (tmp_path / "scan.glb").read_bytes())
    env = {**daemon_env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    spec = {"spec_version": 1, "job_id": "mesh-1m", "kind": "mesh", "inputs": [{"url": url}],
            "params": {"lod_targets": [0.1]}}  # fmt: skip
    # When the job runs in a process of its own, which reports the peak RSS of its largest descendant
    # (the job's Python, each Node tool, Chromium) once they have all ended
    measure = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(done.stdout.strip()); print(done.stderr[-2000:], file=sys.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)"
    )
    command = [sys.executable, "-c", measure, sys.executable, "-m", "daemon", "run-local", json.dumps(spec),
               "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    *answer, peak_mb = done.stdout.strip().splitlines()
    # Then it completed, every level within 5% of its target, under the budget
    result = json.loads("\n".join(answer))
    assert result["status"] == "completed", done.stderr
    levels = result["result"]["lods"]["levels"]
    assert levels[0]["triangles"] == pytest.approx(99_600, rel=0.05)
    assert levels[1]["triangles"] == pytest.approx(996, rel=0.05)  # the 0.1% preview
    print(f"10⁶ triangles: peak RSS {peak_mb} MB, stages {result['result']['timings_s']}")
    assert int(peak_mb) < PEAK_RSS_BUDGET_MB
