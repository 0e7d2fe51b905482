"""`preview.png`: the cloud from above, built tile by tile into one raster (the highest point of each
pixel wins, as a roof hides the ground under it). Coloured by the points' RGB when they have it, else
by elevation with a hillshade (sun from the north-west, 45° up, as GIS tools draw it); pixels no point
falls in are transparent. Noise is left out: a bird 50 m up would stand on the roof.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RAMP = np.array([[38, 115, 77], [120, 170, 90], [214, 200, 130], [170, 120, 80], [245, 245, 245]], float)
"""Elevation colours, low to high: green, light green, sand, brown, snow."""


@dataclass
class TopView:
    """The raster being built: the top height and colour of each pixel."""

    low: np.ndarray
    """The XY bounds' minimum corner."""
    pixel: float
    width: int
    height: int
    top: np.ndarray = field(init=False)
    rgb: np.ndarray = field(init=False)

    size: int = 0
    """The saved image's long side (a raster coarser than it is scaled up on saving)."""

    @classmethod
    def over(cls, mins: np.ndarray, maxs: np.ndarray, size: int, spacing: float) -> TopView:
        """A raster of `size` pixels on the bounds' long side, or fewer when the points are sparser than
        that: a pixel no smaller than twice the point spacing, so the ground shows as a surface."""
        extent = np.asarray(maxs[:2], float) - np.asarray(mins[:2], float)
        pixel = max(float(max(extent.max(), 1e-9)) / size, 2 * spacing)
        width, height = (max(1, min(size, int(np.ceil(e / pixel)))) for e in extent)
        return cls(np.asarray(mins[:2], float), pixel, width, height, size)

    def __post_init__(self) -> None:
        self.top = np.full((self.height, self.width), -np.inf)
        self.rgb = np.zeros((self.height, self.width, 3), np.uint8)

    def add(self, xyz: np.ndarray, rgb16: np.ndarray | None) -> None:
        """Points (N × 3) and their 16-bit colours (N × 3) or None."""
        if len(xyz) == 0:
            return
        column = np.clip(((xyz[:, 0] - self.low[0]) / self.pixel).astype(np.int64), 0, self.width - 1)
        row = np.clip(((xyz[:, 1] - self.low[1]) / self.pixel).astype(np.int64), 0, self.height - 1)
        row = self.height - 1 - row  # north up
        flat = row * self.width + column
        order = np.lexsort((xyz[:, 2], flat))  # per pixel, the highest last
        last = np.r_[flat[order][1:] != flat[order][:-1], True]
        winners = order[last]
        pixels, z = flat[winners], xyz[winners, 2]
        higher = z > self.top.ravel()[pixels]
        pixels, winners = pixels[higher], winners[higher]
        self.top.ravel()[pixels] = xyz[winners, 2]
        if rgb16 is not None:
            self.rgb.reshape(-1, 3)[pixels] = _eight_bit(rgb16[winners])

    def save(self, path: Path, coloured: bool) -> dict[str, object]:
        from PIL import Image

        seen = np.isfinite(self.top)
        image = self.rgb if coloured else _relief(self.top, seen, self.pixel)
        alpha = np.where(seen, 255, 0).astype(np.uint8)
        picture = Image.fromarray(np.dstack([image, alpha]), "RGBA")
        scale = self.size / max(self.width, self.height) if self.size else 1.0
        if scale > 1:  # nearest: no colour bleeds into the transparent pixels
            size = (round(self.width * scale), round(self.height * scale))
            picture = picture.resize(size, Image.Resampling.NEAREST)
        picture.save(path, optimize=True)
        return {"width": picture.width, "height": picture.height, "pixel_m": self.pixel,
                "coloured_by": "rgb" if coloured else "elevation", "filled": float(seen.mean())}  # fmt: skip


def _eight_bit(rgb16: np.ndarray) -> np.ndarray:
    """16-bit LAS colours to 8 bits; a file that stored 8-bit values in the 16-bit fields kept as is."""
    rgb16 = np.asarray(rgb16)
    return (rgb16 >> 8 if rgb16.max(initial=0) > 255 else rgb16).astype(np.uint8)


def _relief(top: np.ndarray, seen: np.ndarray, pixel: float) -> np.ndarray:
    """Elevation colours shaded by the slope's light (hillshade), for clouds without colour."""
    if not seen.any():
        return np.zeros((*top.shape, 3), np.uint8)
    filled = np.where(seen, top, np.nanmedian(np.where(seen, top, np.nan)))
    low, high = np.percentile(filled[seen], [2, 98])
    share = np.clip((filled - low) / max(high - low, 1e-9), 0, 1) * (len(RAMP) - 1)
    below = np.floor(share).astype(int).clip(0, len(RAMP) - 2)
    colour = RAMP[below] + (RAMP[below + 1] - RAMP[below]) * (share - below)[..., None]
    dy, dx = np.gradient(filled, pixel)
    slope, aspect = np.arctan(np.hypot(dx, dy)), np.arctan2(dy, -dx)
    zenith, azimuth = np.radians(45), np.radians(315 - 90)  # sun in the north-west, 45° up
    shade = np.cos(zenith) * np.cos(slope) + np.sin(zenith) * np.sin(slope) * np.cos(azimuth - aspect)
    return (colour * np.clip(0.35 + 0.65 * shade, 0, 1)[..., None]).astype(np.uint8)
