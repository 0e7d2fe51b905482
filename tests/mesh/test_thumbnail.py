"""The thumbnail: three.js in headless Chromium (daemon/js/render.mjs) drawing a Draco-compressed model
with a WebP texture; the picture is checked for what a person would see: the model, centred, filling a
sensible share of a neutral background. The PNG is kept in the test's folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from daemon.errors import InputError
from daemon.handlers.mesh.tools import run_tool
from tests import meshes

BACKGROUND = np.array([236, 236, 236])


def test_a_compressed_textured_model_is_drawn_centred_on_a_neutral_background(tmp_path):
    source = meshes.textured_sphere(tmp_path / "sphere.glb", segments=32)
    cleaned, compressed = tmp_path / "clean.glb", tmp_path / "draco.glb"
    run_tool("clean", {"path": str(source), "out": str(cleaned), "max_texture_size": 256})
    run_tool("compress", {"path": str(cleaned), "out": str(compressed), "method": "draco"})
    png, webp = tmp_path / "thumbnail.png", tmp_path / "thumbnail.webp"
    drawn = run_tool("thumbnail", {"path": str(compressed), "png": str(png), "webp": str(webp), "size": 256})
    assert drawn["triangles"] > 0 and drawn["page_errors"] == []
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    assert pixels.shape == (256, 256, 3)
    model = np.abs(pixels - BACKGROUND).sum(axis=2) > 24
    share = model.mean()
    rows, cols = np.nonzero(model)
    centre = np.array([rows.mean(), cols.mean()]) / 256
    print(f"thumbnail: model covers {share:.0%}, centred at {centre.round(2)}; {png}")
    assert 0.15 < share < 0.8  # the model fills the frame without spilling over it
    assert np.allclose(centre, 0.5, atol=0.08)
    assert (pixels[~model] == BACKGROUND).all(axis=1).mean() > 0.95  # a plain background
    assert pixels[model].std() > 10  # the texture shows: not a flat silhouette
    assert Image.open(webp).size == (256, 256)


def test_a_model_the_page_cannot_draw_is_a_render_failure(tmp_path):
    broken = meshes.truncated(meshes.textured_sphere(tmp_path / "s.glb", segments=8), tmp_path / "b.glb", 100)
    with pytest.raises(InputError) as refused:
        run_tool(
            "thumbnail",
            {"path": str(broken), "png": str(tmp_path / "t.png"), "webp": str(tmp_path / "t.webp")},
        )
    assert refused.value.code == "render_failed"
