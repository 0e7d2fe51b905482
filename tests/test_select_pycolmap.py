"""`scripts/select_pycolmap.sh`: the CUDA 12 wheel of the pinned pycolmap on a host whose `nvidia-smi`
lists a GPU (and always on the fleet: user data forces it), the pinned CPU wheel elsewhere. pip is a
recorder here (the test must not change the venv it runs in); the GPU is a stand-in `nvidia-smi` on
PATH, as no GPU is available to us."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures_daemon import ROOT

SCRIPT = ROOT / "scripts" / "select_pycolmap.sh"
PINNED = next(
    line.split("==")[1].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.startswith("pycolmap==")
)  # fmt: skip


def run(
    tmp_path: Path, *, gpu: bool, build: str | None = None
) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "pip-calls"
    recorder = bin_dir / "pip-recorder"
    recorder.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    recorder.chmod(0o755)
    if gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA L4 (UUID: GPU-0b5c7d1e)"\n')
        smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PIP": str(recorder)}
    if build is not None:
        env["PYCOLMAP_BUILD"] = build
    done = subprocess.run([str(SCRIPT), str(tmp_path / "venv")], env=env, capture_output=True, text=True)
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_a_gpu_host_gets_the_cuda_wheel_of_the_pinned_version(tmp_path):
    done, calls = run(tmp_path, gpu=True)
    assert done.returncode == 0, done.stderr
    assert calls == ["uninstall -q -y pycolmap", f"install -q --no-cache-dir pycolmap-cuda12=={PINNED}"]
    assert f"pycolmap {PINNED} (cuda12)" in done.stdout


def test_a_host_without_a_gpu_keeps_the_pinned_cpu_wheel(tmp_path):
    done, calls = run(tmp_path, gpu=False)
    assert done.returncode == 0, done.stderr
    assert calls == ["uninstall -q -y pycolmap-cuda12", f"install -q --no-cache-dir pycolmap=={PINNED}"]


@pytest.mark.parametrize(("build", "wheel"), [("cpu", "pycolmap"), ("cuda12", "pycolmap-cuda12")])
def test_the_build_can_be_forced(tmp_path, build, wheel):
    done, calls = run(tmp_path, gpu=build == "cpu", build=build)
    assert done.returncode == 0, done.stderr
    assert calls[-1] == f"install -q --no-cache-dir {wheel}=={PINNED}"


def test_an_unknown_build_is_refused_before_pip_runs(tmp_path):
    done, calls = run(tmp_path, gpu=False, build="rocm")
    assert done.returncode == 1 and "expected cuda12 or cpu" in done.stderr
    assert calls == []


def test_the_fleet_and_the_makefile_both_select_the_build():
    assert (
        'PYCOLMAP_BUILD=cuda12 "$APP_DIR/scripts/select_pycolmap.sh" "$VENV"'
        in (ROOT / "ops" / "launch-template" / "user-data.sh").read_text()
    )
    assert "scripts/select_pycolmap.sh $(VENV)" in (ROOT / "Makefile").read_text()
    assert os.access(SCRIPT, os.X_OK)
