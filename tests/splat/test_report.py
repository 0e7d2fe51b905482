"""The preview and the training-curve picture are real PNGs of the expected size."""

from __future__ import annotations

import torch
from PIL import Image

from daemon.handlers.splat.report import PANEL, save_curves, save_preview


def test_preview_png_has_the_view_size(tmp_path):
    save_preview(torch.rand(36, 48, 3), tmp_path / "preview.png")
    with Image.open(tmp_path / "preview.png") as img:
        assert (img.format, img.size, img.mode) == ("PNG", (48, 36), "RGB")


def test_curves_png_stacks_three_panels_and_draws_lines(tmp_path):
    history = {
        "step": [1, 2, 3, 4],
        "loss": [0.5, 0.3, 0.2, 0.15],
        "gaussians": [300, 400, 450, 460],
        "eval_step": [2, 4],
        "psnr": [18.0, 24.0],
    }
    save_curves(history, tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as img:
        assert img.size == (PANEL[0], 3 * PANEL[1])
        # the plotted line colour is present in every panel
        blue = (31, 119, 180)
        for i in range(3):
            panel = img.crop((0, i * PANEL[1], PANEL[0], (i + 1) * PANEL[1]))
            assert any(pixel == blue for pixel in panel.getdata())
