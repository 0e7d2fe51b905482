"""Generated 3D models of the three kinds customers upload to the mesh job, for `demo.py --kind mesh`,
the mesh benchmark and the memory test. Deterministic for a seed; numpy, Pillow and trimesh only.

- `scan`: what a photogrammetry or structured-light scanner exports: one dense, noisy closed surface
  (a lumpy stone about 30 cm across) with one large photo-like JPEG texture.
- `cad`: a CAD export: hundreds of small untextured parts (plates, bolts, shafts), each its own mesh,
  node and material, flat-shaded (hard edges split vertices), on a 1 m assembly.
- `textured_set`: a product model of a few parts with a large texture each (PNG and JPEG), as a
  game or e-commerce asset comes.
"""

from __future__ import annotations

import io

import numpy as np
import trimesh
from PIL import Image


def photo_texture(size: int, seed: int = 0, *, octaves: int = 7) -> Image.Image:
    """A texture with detail at every scale, as a photo has (resizing or re-encoding it changes it
    measurably; a flat or periodic texture would flatter every encoder)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.float32)
    for octave in range(octaves):
        cells = min(size, 4 << octave)
        grid = Image.fromarray((rng.random((cells, cells, 3)) * 255).astype(np.uint8))
        image += np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), np.float32) / (1.6**octave)
    image -= image.min()
    image *= 255 / image.max()
    return Image.fromarray(image.astype(np.uint8))


def _as_jpeg(image: Image.Image, quality: int = 90) -> Image.Image:
    """`image` decoded from JPEG bytes: trimesh then stores it as JPEG, as a scanner's export does."""
    data = io.BytesIO()
    image.save(data, "JPEG", quality=quality)
    return Image.open(io.BytesIO(data.getvalue()))


def _textured(mesh: trimesh.Trimesh, uv: np.ndarray, image: Image.Image) -> trimesh.Trimesh:
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=image, metallicFactor=0.0, roughnessFactor=0.8
    )
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return mesh


def scan(triangles: int = 1_000_000, texture_size: int = 4096, seed: int = 0) -> trimesh.Scene:
    """A lumpy stone of about `triangles` triangles with one JPEG texture of `texture_size` px."""
    rng = np.random.default_rng(seed)
    rows = max(8, round(np.sqrt(triangles / 4)))  # a UV sphere of n×n has about 4n² triangles
    mesh = trimesh.creation.uv_sphere(radius=1.0, count=[rows, rows])
    unit = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    # Lumps at a few scales and a fine grain: smooth sums of random plane waves on the sphere
    bump = np.zeros(len(unit))
    for scale, amplitude in ((2, 0.18), (5, 0.06), (13, 0.02), (40, 0.004)):
        for _ in range(6):
            direction = rng.normal(size=3)
            bump += (
                amplitude
                / 6
                * np.sin(scale * unit @ (direction / np.linalg.norm(direction)) + rng.uniform(0, 6.3))
            )
    mesh.vertices = unit * (0.15 * (1 + bump))[:, None]
    x, y, z = unit.T
    uv = np.c_[0.5 + np.arctan2(y, x) / (2 * np.pi), 0.5 + np.arcsin(np.clip(z, -1, 1)) / np.pi]
    stone = _textured(mesh, uv, _as_jpeg(photo_texture(texture_size, seed)))
    scene = trimesh.Scene()
    scene.add_geometry(stone, node_name="scan", geom_name="scan")
    return scene


def cad(parts: int = 400, seed: int = 0) -> trimesh.Scene:
    """An assembly of `parts` small parts on a 1 m grid: plates, hex bolts and shafts, each a mesh of
    its own with its own material, flat-shaded."""
    rng = np.random.default_rng(seed)
    scene = trimesh.Scene()
    side = int(np.ceil(np.sqrt(parts)))
    for index in range(parts):
        kind = index % 3
        if kind == 0:
            part = trimesh.creation.box(extents=rng.uniform([0.02, 0.02, 0.003], [0.05, 0.05, 0.01]))
        elif kind == 1:
            part = trimesh.creation.cylinder(radius=rng.uniform(0.003, 0.008), height=0.03, sections=6)
        else:
            part = trimesh.creation.cylinder(
                radius=rng.uniform(0.004, 0.01), height=rng.uniform(0.04, 0.1), sections=32
            )
        part.unmerge_vertices()  # flat shading: each face its own vertices, as CAD exports do
        colour = np.r_[rng.uniform(0.2, 0.9, 3), 1.0]
        part.visual = trimesh.visual.TextureVisuals(
            material=trimesh.visual.material.PBRMaterial(
                baseColorFactor=colour, metallicFactor=0.7, roughnessFactor=0.4
            )
        )
        transform = trimesh.transformations.random_rotation_matrix(rng.random(3))
        transform[:3, 3] = [(index % side) / side, (index // side) / side, rng.uniform(0, 0.05)]
        scene.add_geometry(
            part, node_name=f"part_{index:04d}", geom_name=f"part_{index:04d}", transform=transform
        )
    return scene


def textured_set(textures: int = 4, texture_size: int = 4096, seed: int = 0) -> trimesh.Scene:
    """`textures` parts (spheres and boxes of a few thousand triangles) side by side, each with its
    own `texture_size` px texture, PNG and JPEG alternately."""
    scene = trimesh.Scene()
    for index in range(textures):
        if index % 2 == 0:
            part = trimesh.creation.uv_sphere(radius=0.25, count=[64, 64])
            x, y, z = (part.vertices / 0.25).T
            uv = np.c_[0.5 + np.arctan2(y, x) / (2 * np.pi), 0.5 + np.arcsin(np.clip(z, -1, 1)) / np.pi]
        else:
            part = trimesh.creation.box(extents=[0.4, 0.4, 0.4]).subdivide().subdivide().subdivide()
            part.unmerge_vertices()
            uv = (part.vertices[:, :2] / 0.4 + 0.5) % 1.0
        image = photo_texture(texture_size, seed + index)
        part = _textured(part, uv, _as_jpeg(image) if index % 2 else image)
        part.apply_translation([index * 0.6, 0, 0])
        scene.add_geometry(part, node_name=f"part_{index}", geom_name=f"part_{index}")
    return scene


def write_glb(scene: trimesh.Scene, path: str) -> None:
    with open(path, "wb") as out:
        out.write(scene.export(file_type="glb"))
