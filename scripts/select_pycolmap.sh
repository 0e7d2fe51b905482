#!/usr/bin/env bash
# Put the right pycolmap build into a venv, once requirements.txt is installed: on a host with an NVIDIA
# GPU the CUDA 12 wheel (`pycolmap-cuda12`, PyPI), whose SIFT extraction and matching run on the GPU;
# everywhere else the CPU wheel that requirements.txt pins. Both are the same version and import as
# `pycolmap`, so the daemon's code path is one; the SfM stage records which ran (the manifest's
# `sfm.pycolmap`). Called by the Makefile (`make venv`) and by the launch template's user data.
#
#   scripts/select_pycolmap.sh VENV            # detect: `nvidia-smi -L` lists a GPU → CUDA wheel
#   PYCOLMAP_BUILD=cuda12|cpu scripts/select_pycolmap.sh VENV   # force one
set -Eeuo pipefail

venv=${1:?usage: select_pycolmap.sh VENV}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
requirements="$here/../requirements.txt"
pip=${PIP:-"$venv/bin/pip"}  # (tests point PIP at a recorder)

version=$(sed -n 's/^pycolmap==\([^ ;#]*\).*/\1/p' "$requirements")
[ -n "$version" ] || { echo "select_pycolmap: requirements.txt pins no pycolmap==VERSION" >&2; exit 1; }

build=${PYCOLMAP_BUILD:-}
if [ -z "$build" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    build=cuda12
  else
    build=cpu
  fi
fi

case $build in
  cuda12)
    # The two wheels own the same `pycolmap` package directory: remove the CPU one first.
    $pip uninstall -q -y pycolmap
    $pip install -q --no-cache-dir "pycolmap-cuda12==$version"
    ;;
  cpu)
    $pip uninstall -q -y pycolmap-cuda12 >/dev/null 2>&1 || true
    $pip install -q --no-cache-dir "pycolmap==$version"
    ;;
  *)
    echo "select_pycolmap: PYCOLMAP_BUILD=$build: expected cuda12 or cpu" >&2
    exit 1
    ;;
esac
echo "select_pycolmap: pycolmap $version ($build)"
