"""Small pictures for the customer and the operator: a preview render and the training curves.

Drawn with Pillow (already needed for the photos) rather than matplotlib: three small line charts do
not justify a plotting stack on every GPU host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

PANEL = (480, 140)
"""Width and height of one chart panel, in pixels."""


def save_preview(rendered: torch.Tensor, path: Path) -> None:
    """A rendered [H, W, 3] view in [0, 1] as a PNG."""
    pixels = (rendered.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(path, format="PNG", optimize=True)


def _panel(title: str, steps: Sequence[float], values: Sequence[float]) -> Image.Image:
    width, height = PANEL
    img = Image.new("RGB", PANEL, "white")
    draw = ImageDraw.Draw(img)
    points = [(s, v) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
    draw.text((8, 4), title, fill="black")
    if len(points) < 2:
        draw.text((8, height // 2), "not enough points", fill="gray")
        return img
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    first, last = points[0][0], points[-1][0]
    left, right, top, bottom = 50, width - 10, 22, height - 18

    def xy(step: float, value: float) -> tuple[float, float]:
        x = left + (right - left) * (step - first) / max(1, last - first)
        y = bottom - (bottom - top) * (value - lo) / ((hi - lo) or 1.0)
        return x, y

    draw.rectangle((left, top, right, bottom), outline="#bbbbbb")
    draw.line([xy(s, v) for s, v in points], fill="#1f77b4", width=2)
    draw.text((4, top), f"{hi:.3g}", fill="gray")
    draw.text((4, bottom - 10), f"{lo:.3g}", fill="gray")
    draw.text((left, bottom + 3), f"step {first}", fill="gray")
    draw.text((right - 70, bottom + 3), f"step {last}", fill="gray")
    return img


def save_curves(history: dict[str, list[float]], path: Path) -> None:
    """Loss, held-out PSNR and Gaussian count against the step, stacked in one PNG.
    `history` has "step", "loss", "gaussians" (every logged step) and "eval_step", "psnr"."""
    panels = [
        _panel("training loss", history["step"], history["loss"]),
        _panel("held-out PSNR (dB)", history.get("eval_step", []), history.get("psnr", [])),
        _panel("Gaussians", history["step"], history["gaussians"]),
    ]
    sheet = Image.new("RGB", (PANEL[0], PANEL[1] * len(panels)), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, (0, i * PANEL[1]))
    sheet.save(path, format="PNG", optimize=True)
