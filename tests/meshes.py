"""Generated 3D models with known properties, for the mesh kind's tests (trimesh writes them)."""

from __future__ import annotations

import json
import zipfile
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


def sphere_mesh(*, radius: float = 0.5, segments: int = 16, texture_size: int = 128) -> trimesh.Trimesh:
    """A UV sphere of `radius` with an equirectangular texture (closed; ~4·s² triangles for s =
    `segments`)."""
    mesh = trimesh.creation.uv_sphere(radius=radius, count=[segments, segments])
    x, y, z = (mesh.vertices / radius).T
    uv = np.c_[0.5 + np.arctan2(y, x) / (2 * np.pi), 0.5 + np.arcsin(np.clip(z, -1, 1)) / np.pi]
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=texture(texture_size))
    return mesh


def textured_sphere(path: Path, *, radius: float = 0.5, segments: int = 32, texture_size: int = 256) -> Path:
    """The textured sphere written as a GLB."""
    sphere_mesh(radius=radius, segments=segments, texture_size=texture_size).export(path)
    return path


def truncated(source: Path, path: Path, keep: int) -> Path:
    """The first `keep` bytes of `source`."""
    path.write_bytes(source.read_bytes()[:keep])
    return path


def zipped(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def gltf_files(mesh: trimesh.Trimesh, *, buffer_uri: str | None = None) -> dict[str, bytes]:
    """A .gltf (`model.gltf`) and the buffer and image files it names; `buffer_uri` replaces the
    first buffer's URI (to point it somewhere it must not)."""
    files: dict[str, bytes] = trimesh.Scene(mesh).export(file_type="gltf")
    if buffer_uri is not None:
        document = json.loads(files["model.gltf"])
        document["buffers"][0]["uri"] = buffer_uri
        files["model.gltf"] = json.dumps(document).encode()
    return files


def obj_files(mesh: trimesh.Trimesh, *, with_texture: bool = True) -> dict[str, bytes]:
    """`model.obj`, its `model.mtl` and (unless not `with_texture`) the texture the MTL names."""
    text, extra = trimesh.exchange.obj.export_obj(
        mesh, include_texture=True, return_texture=True, mtl_name="model.mtl"
    )
    files = {"model.obj": text.encode(), **extra}
    if not with_texture:
        files = {name: data for name, data in files.items() if not name.endswith(".png")}
    return files


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares `width`×`height` and whose pixels are missing: what a reader sees
    before it decodes anything (a 16k×16k texture without the 768 MB it would take to make one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def gltf_with_texture_file(mesh: trimesh.Trimesh, png: bytes) -> dict[str, bytes]:
    """`gltf_files(mesh)` with its texture moved out of the buffers into `texture.png`, holding `png`."""
    files = gltf_files(mesh)
    document = json.loads(files["model.gltf"])
    document["images"] = [{"uri": "texture.png", "mimeType": "image/png"}]
    return {**files, "model.gltf": json.dumps(document).encode(), "texture.png": png}
