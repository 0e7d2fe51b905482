"""A real client reads the outputs: every GLB a mesh job makes from the public samples (tests/data/mesh)
opens in three.js's GLTFLoader (Draco and meshopt decoders) and in <model-viewer>, in headless Debian
Chromium (tests/mesh/viewers/open.mjs), without an error, a refused request or a blank canvas; three.js
draws exactly the triangles the manifest reports for each level. The thumbnail matches a reference
render: the uploaded model as read, before any optimisation, drawn by the same renderer.

Screenshots are kept in test-artifacts/mesh-viewers/ (or $TEST_ARTIFACTS_DIR/mesh-viewers/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.handlers.mesh.tools import run_tool
from tests.fixtures_daemon import ROOT

pytestmark = pytest.mark.slow

DATA = ROOT / "tests" / "data" / "mesh"
OPEN = ROOT / "tests" / "mesh" / "viewers" / "open.mjs"
JOBS = {  # job id → (sample, params): one Draco job, one meshopt job
    "viewers-fbx": ("spider_fbx.zip", {"lod_targets": [0.5, 0.2]}),
    "viewers-gltf": ("spider_gltf.zip", {"lod_targets": [0.5], "compression": "meshopt"}),
}


def artifacts() -> Path:
    folder = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "test-artifacts") / "mesh-viewers"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def jobs(file_server, tmp_path_factory) -> dict[str, Path]:
    """Each sample run through the whole mesh job (`run-local`, work folder kept): job id → its folder
    with `out/` (the outputs) and `work/` (the stages' files)."""
    base = tmp_path_factory.mktemp("viewer-jobs")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "S3_", "SENTRY_"))},
        "DAEMON_ENV_FILE": str(base / "no.env"), "DAEMON_WORK_DIR": str(base / "work"),
        "DAEMON_STATE_DIR": str(base / "state"), "REDIS_URL": "redis://127.0.0.1:1/0",
        "URL_ALLOW_NETWORKS": "127.0.0.1/32", "IMDS_URL": "",
    }  # fmt: skip
    folders = {}
    for job_id, (sample, params) in JOBS.items():
        url = file_server.add(f"{job_id}-{sample}", (DATA / sample).read_bytes())
        spec = {"spec_version": 1, "job_id": job_id, "kind": "mesh", "inputs": [{"url": url, "name": sample}],
                "params": params}  # fmt: skip
        folder = base / job_id
        done = subprocess.run(
            [sys.executable, "-m", "daemon", "run-local", json.dumps(spec), "--out", str(folder / "out"),
             "--workdir", str(folder / "work")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert json.loads(done.stdout)["status"] == "completed", done.stderr[-3000:]
        folders[job_id] = folder
    return folders


def open_in_viewers(models: list[Path], out: Path) -> list[dict]:
    viewers = ["three", "model-viewer"]
    args = {"models": [str(m) for m in models], "viewers": viewers, "out": str(out), "size": 320}
    done = subprocess.run(["node", str(OPEN), json.dumps(args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def drawn_share(png: Path) -> float:
    """The share of the picture that is not the page's white background."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return float((np.abs(pixels - 255).sum(axis=2) > 30).mean())


def test_every_output_opens_in_three_js_and_model_viewer(jobs):
    for job_id, folder in jobs.items():
        out = folder / "out" / job_id
        manifest = json.loads((out / "manifest.json").read_text())
        expected = {"model.glb": manifest["optimized"]["triangles"]}
        expected |= {level["name"]: level["triangles"] for level in manifest["lods"]["levels"]}
        # Given every GLB the job made, named after its job so the screenshots say which
        models = []
        for name in expected:
            models.append(artifacts() / f"{job_id}-{name}")
            models[-1].write_bytes((out / name).read_bytes())
        # When each is opened in both viewers
        results = open_in_viewers(models, artifacts())
        assert len(results) == 2 * len(models)
        for result in results:
            name = Path(result["model"]).name.removeprefix(f"{job_id}-")
            where = f"{name} in {result['viewer']} ({job_id}): {result}"
            # Then it loaded with no error and asked for nothing but its own files
            assert result["ok"] is True and result["console_errors"] == [] and result["refused"] == [], where
            # And it drew the model: neither a blank canvas nor a flooded one
            share = drawn_share(Path(result["screenshot"]))
            assert 0.02 < share < 0.9, f"{where}: {share:.1%} drawn"
            # And three.js drew exactly the triangles the manifest reports for that file
            if result["viewer"] == "three":
                assert result["triangles"] == expected[name], where


def test_the_thumbnail_matches_a_reference_render_of_the_model_as_uploaded(jobs, tmp_path):
    from skimage.metrics import structural_similarity

    for job_id, folder in jobs.items():
        # Given the job's thumbnail (of the optimised, compressed model) and the same renderer's picture
        # of the model as it was read, before any optimisation
        thumbnail = folder / "out" / job_id / "thumbnail.png"
        reference = artifacts() / f"{job_id}-reference.png"
        size = Image.open(thumbnail).size[0]
        run_tool("thumbnail", {"path": str(folder / "work" / "read" / "source.glb"), "png": str(reference),
                               "webp": str(tmp_path / f"{job_id}.webp"), "size": size})  # fmt: skip
        (artifacts() / f"{job_id}-thumbnail.png").write_bytes(thumbnail.read_bytes())
        # Then the two are the same picture, up to what texture re-encoding and quantisation change
        ours, theirs = (np.asarray(Image.open(p).convert("L"), dtype=float) for p in (thumbnail, reference))
        similarity = structural_similarity(ours, theirs, data_range=255)
        print(f"{job_id}: thumbnail vs reference render SSIM {similarity:.3f}")
        assert similarity > 0.9, f"{job_id}: SSIM {similarity:.3f}"
