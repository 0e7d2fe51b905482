"""The mesh job's small decisions, on their own: how many triangles a level keeps, its texture cap,
and which file the thumbnail is drawn from."""

from __future__ import annotations

from pathlib import Path

from daemon.handlers.mesh.job import lod_texture_size, lod_triangles, thumbnail_file
from daemon.handlers.mesh.params import MeshParams

ROOT = Path("/work")


def test_a_level_keeps_a_share_or_a_vertex_count_never_more_than_the_model():
    assert lod_triangles(0.5, vertices=500, triangles=1000) == 500
    assert lod_triangles(100_000, vertices=500_000, triangles=1_000_000) == 200_000  # the model's ratio
    assert lod_triangles(1_000_000, vertices=500, triangles=1000) == 1000


def test_texture_caps_halve_along_the_chain_and_the_preview_is_small():
    params = MeshParams(max_texture_size=2048)
    assert [lod_texture_size(i, f"model_lod{i}", params) for i in range(5)] == [None, 1024, 512, 256, 256]
    assert lod_texture_size(3, "preview", params) == 256


def chain(*triangles: int) -> dict:
    names = [f"model_lod{i}.glb" for i in range(len(triangles) - 1)] + ["preview.glb"]
    return {"levels": [{"name": n, "triangles": t} for n, t in zip(names, triangles, strict=True)]}


def test_the_thumbnail_is_drawn_from_the_lightest_file_that_looks_the_same():
    params = MeshParams()  # 2048 px textures, 512 px thumbnail
    # A 1M-triangle scan: its first level under 300k triangles
    scan = thumbnail_file(ROOT, params, {"triangles": 996_000}, chain(996_000, 199_000, 19_900, 996))
    assert scan == ROOT / "lods" / "model_lod1.glb"
    # A small model with large textures: the same geometry with 512 px textures (lod2), not the
    # simplified lod3 nor the 256 px preview
    small = thumbnail_file(ROOT, params, {"triangles": 33_000}, chain(33_000, 33_000, 33_000, 16_000, 200))
    assert small == ROOT / "lods" / "model_lod2.glb"
    # ... and with a 1024 px thumbnail, the 1024 px level
    large = MeshParams(thumbnail_size=1024)
    big = thumbnail_file(ROOT, large, {"triangles": 33_000}, chain(33_000, 33_000, 33_000, 16_000, 200))
    assert big == ROOT / "lods" / "model_lod1.glb"
    # A 2M-triangle model whose every level is too heavy but the preview
    heavy = thumbnail_file(ROOT, params, {"triangles": 2_000_000}, chain(2_000_000, 2_000))
    assert heavy == ROOT / "lods" / "preview.glb"
