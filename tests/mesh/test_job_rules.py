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


def chain(*levels: tuple[int, float]) -> dict:
    """A LOD record: (triangles, Hausdorff error as a share of the diagonal) per level, preview last."""
    names = [f"model_lod{i}.glb" for i in range(len(levels) - 1)] + ["preview.glb"]
    return {
        "levels": [
            {"name": n, "triangles": t, "hausdorff": e} for n, (t, e) in zip(names, levels, strict=True)
        ]
    }


def test_the_thumbnail_is_drawn_from_the_lightest_file_that_looks_the_same():
    params = MeshParams()  # 2048 px textures, 512 px thumbnail
    # A 1M-triangle scan: its first level under 300k triangles, not the next whose error is 1.5 px
    levels = chain((996_000, 0), (199_000, 0.0002), (19_900, 0.003), (996, 0.02))
    scan = thumbnail_file(ROOT, params, {"triangles": 996_000}, levels)
    assert scan == ROOT / "lods" / "model_lod1.glb"
    # A small model with large textures: the level with 512 px textures (lod2, an error of 0.1 px),
    # not lod3 (its error 2.5 px) nor the 256 px preview
    levels = chain((33_000, 0), (33_000, 0), (20_000, 0.0002), (16_000, 0.005), (200, 0.1))
    small = thumbnail_file(ROOT, params, {"triangles": 33_000}, levels)
    assert small == ROOT / "lods" / "model_lod2.glb"
    # ... with a 1024 px thumbnail, the 1024 px level
    big = thumbnail_file(ROOT, MeshParams(thumbnail_size=1024), {"triangles": 33_000}, levels)
    assert big == ROOT / "lods" / "model_lod1.glb"
    # ... and where lod1's simplification shows (0.6 px), the model itself
    levels = chain((33_000, 0), (30_000, 0.0012), (20_000, 0.0002), (200, 0.1))
    coarse = thumbnail_file(ROOT, params, {"triangles": 33_000}, levels)
    assert coarse == ROOT / "lods" / "model_lod0.glb"
    # A 2M-triangle model whose every level is too heavy but the preview
    heavy = thumbnail_file(ROOT, params, {"triangles": 2_000_000}, chain((2_000_000, 0), (2_000, 0.05)))
    assert heavy == ROOT / "lods" / "preview.glb"
