"""Generated 3D models with known properties, for the mesh kind's tests (trimesh writes them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from PIL import Image


def texture(size: int, seed: int = 0) -> Image.Image:
    """A texture with detail at every scale (resizing it changes it measurably)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((8, 8, 3))
    image = np.kron(coarse, np.ones((size // 8, size // 8, 1))) * 0.7 + rng.random((size, size, 3)) * 0.3
    return Image.fromarray((image * 255).astype(np.uint8))


def textured_sphere(path: Path, *, radius: float = 0.5, segments: int = 32, texture_size: int = 256) -> Path:
    """A UV sphere of `radius` with an equirectangular texture (closed; ~4·s² triangles for s =
    `segments`)."""
    mesh = trimesh.creation.uv_sphere(radius=radius, count=[segments, segments])
    x, y, z = (mesh.vertices / radius).T
    uv = np.c_[0.5 + np.arctan2(y, x) / (2 * np.pi), 0.5 + np.arcsin(np.clip(z, -1, 1)) / np.pi]
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=texture(texture_size))
    mesh.export(path)
    return path


def truncated(source: Path, path: Path, keep: int) -> Path:
    """The first `keep` bytes of `source`."""
    path.write_bytes(source.read_bytes()[:keep])
    return path
