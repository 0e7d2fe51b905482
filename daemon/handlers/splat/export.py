"""Exporting a trained model: the standard 3DGS PLY, plus gsplat's compressed formats.

The standard layout is what viewers read: `x y z nx ny nz f_dc_0..2 f_rest_0..(3·(K-1)-1) opacity
scale_0..2 rot_0..3`, binary little-endian float32, with f_rest channel-major (all of red's higher
bands, then green's, then blue's), opacity as a logit and scales as logs, as the original 3DGS code
writes it. gsplat 1.5.3's own "ply" omits the normals and writes an EMPTY model if a single opacity is
NaN/Inf (it reduces the opacity check over the wrong axis), so non-finite rows are filtered here first,
for every format.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ...errors import JobError


def finite_rows(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mask of Gaussians whose every value is finite."""
    n = len(params["means"])
    ok = torch.ones(n, dtype=torch.bool)
    for value in params.values():
        ok &= torch.isfinite(value.detach().reshape(n, -1)).all(dim=1)
    return ok


def _filtered(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    on_cpu = {k: v.detach().cpu() for k, v in params.items()}
    keep = finite_rows(on_cpu)
    out = {k: v[keep] for k, v in on_cpu.items()}
    if len(out["means"]) == 0:
        raise JobError("the trained model has no finite Gaussians left to export", code="export_failed")
    return out


def ply_property_names(sh_rest: int) -> list[str]:
    """Property names of the standard layout for `sh_rest` higher SH coefficients per channel."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * sh_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def write_ply(path: Path, params: Mapping[str, torch.Tensor]) -> int:
    """Write the standard PLY; returns the number of Gaussians written."""
    p = _filtered(params)
    n = len(p["means"])
    rest = p["shN"].permute(0, 2, 1).reshape(n, -1)  # [N, 3·K'] channel-major
    columns = [
        p["means"],
        torch.zeros((n, 3)),
        p["sh0"].reshape(n, 3),
        rest,
        p["opacities"].reshape(n, 1),
        p["scales"],
        p["quats"],
    ]
    data = torch.cat(columns, dim=1).numpy().astype("<f4")
    names = ply_property_names(p["shN"].shape[1])
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
    header += "".join(f"property float {name}\n" for name in names) + "end_header\n"
    with path.open("wb") as out:
        out.write(header.encode("ascii"))
        out.write(np.ascontiguousarray(data).tobytes())
    return n


def write_compressed(
    path: Path, params: Mapping[str, torch.Tensor], fmt: Literal["ply_compressed", "splat"]
) -> None:
    """gsplat's `ply_compressed` (SuperSplat) or `.splat` (antimatter15), from filtered rows."""
    from gsplat import export_splats

    p = _filtered(params)
    export_splats(
        means=p["means"],
        scales=p["scales"],
        quats=p["quats"],
        opacities=p["opacities"].reshape(-1),
        sh0=p["sh0"],
        shN=p["shN"],
        format=fmt,
        save_to=str(path),
    )


def read_ply(path: Path) -> tuple[list[str], np.ndarray]:
    """Property names and a [N, P] float32 array, for tests and for checking what we wrote."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    count = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    names = [line.split()[2] for line in lines if line.startswith("property float")]
    data = np.frombuffer(raw[end:], dtype="<f4").reshape(count, len(names))
    return names, data
