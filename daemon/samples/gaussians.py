"""Random Gaussians in front of a camera, for the rasterizer's tests and benchmark (torch): seeded, so
both render the same scene; and `look_at` for the trainer's cameras.

Cameras here are 4×4 world-to-camera matrices in gsplat's convention (OpenCV: x right, y down,
z forward), as the rasterizer takes them.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def look_at(eye: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """World-to-camera matrix (OpenCV: x right, y down, z forward) of a camera at `eye` looking at
    `target`, with the world's y up (unlike `cameras.look_at`, whose world has z up)."""
    forward = (target - eye) / (target - eye).norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, -1.0, 0.0]))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward])
    view = torch.eye(4)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye
    return view


def make_scene(
    n: int,
    width: int,
    height: int,
    cameras: int = 2,
    seed: int = 0,
    sh_degree: int | None = None,
    dense_cover: bool = False,
) -> dict[str, Any]:
    """N Gaussians 2–6 units in front of camera 0 (about the frustum, some outside it); camera c is
    turned by 0.15·c rad about y and shifted by 0.3·c along x. `dense_cover`: 3× larger and mostly
    opaque, so most pixels saturate (the T ≤ 1e-4 stop rule matters). Keys: the rasterizer's
    arguments (means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree)."""
    g = torch.Generator().manual_seed(seed)

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    f = 0.9 * width
    z = 2.0 + 4.0 * u(n)
    x, y = (u(n) - 0.5) * 1.2 * z * width / f, (u(n) - 0.5) * 1.2 * z * height / f
    # Log-uniform sizes of about 0.2-5 px standard deviation on screen at any resolution.
    scales = torch.exp(math.log(0.02) + u(n, 3) * math.log(8.0)) * 64 / width * (3.0 if dense_cover else 1.0)
    colors = u(n, 3) if sh_degree is None else torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    viewmats = torch.eye(4).repeat(cameras, 1, 1)
    for c in range(cameras):
        a = 0.15 * c
        cos, sin = math.cos(a), math.sin(a)
        viewmats[c, :3, :3] = torch.tensor([[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]])
        viewmats[c, 0, 3] = 0.3 * c
    intrinsics = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
    return {
        "means": torch.stack([x, y, z], -1),
        "quats": torch.randn(n, 4, generator=g),
        "scales": scales,
        "opacities": torch.sigmoid(torch.randn(n, generator=g) * 1.5 + (2.0 if dense_cover else 0.0)),
        "colors": colors,
        "viewmats": viewmats,
        "Ks": intrinsics.repeat(cameras, 1, 1),
        "width": width,
        "height": height,
        "sh_degree": sh_degree,
    }
