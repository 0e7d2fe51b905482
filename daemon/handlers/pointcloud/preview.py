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


@dataclass(frozen=True)
class Raster:
    """The preview's pixel grid: small enough to hand to the processes that draw tiles (tilework.py)."""

    low: tuple[float, float]
    """The XY bounds' minimum corner."""
    pixel: float
    width: int
    height: int

    def highest(self, xyz: np.ndarray, rgb8: np.ndarray | None) -> Drawn:
        """Of these points (N × 3, with their 8-bit colours N × 3 or None), the highest in each pixel."""
        if len(xyz) == 0:
            none = None if rgb8 is None else np.zeros((0, 3), np.uint8)
            return Drawn(np.zeros(0, np.int64), np.zeros(0), none)
        column = np.clip(((xyz[:, 0] - self.low[0]) / self.pixel).astype(np.int64), 0, self.width - 1)
        row = np.clip(((xyz[:, 1] - self.low[1]) / self.pixel).astype(np.int64), 0, self.height - 1)
        flat = (self.height - 1 - row) * self.width + column  # north up
        order = np.lexsort((xyz[:, 2], flat))  # per pixel, the highest last
        winners = order[np.r_[flat[order][1:] != flat[order][:-1], True]]
        return Drawn(flat[winners], xyz[winners, 2], None if rgb8 is None else rgb8[winners])


@dataclass(frozen=True)
class Drawn:
    """Pixels (flat indices), the height of the highest point in each, and its colour."""

    pixels: np.ndarray
    z: np.ndarray
    rgb: np.ndarray | None


@dataclass
class TopView:
    """The raster being built: the top height and colour of each pixel."""

    raster: Raster
    size: int = 0
    """The saved image's long side (a raster coarser than it is scaled up on saving)."""
    top: np.ndarray = field(init=False)
    rgb: np.ndarray = field(init=False)

    @classmethod
    def over(cls, mins: np.ndarray, maxs: np.ndarray, size: int, spacing: float) -> TopView:
        """A raster of `size` pixels on the bounds' long side, or fewer when the points are sparser than
        that: a pixel no smaller than twice the point spacing, so the ground shows as a surface."""
        extent = np.asarray(maxs[:2], float) - np.asarray(mins[:2], float)
        pixel = max(float(max(extent.max(), 1e-9)) / size, 2 * spacing)
        width, height = (max(1, min(size, int(np.ceil(e / pixel)))) for e in extent)
        return cls(Raster((float(mins[0]), float(mins[1])), pixel, width, height), size)

    def __post_init__(self) -> None:
        self.top = np.full((self.raster.height, self.raster.width), -np.inf)
        self.rgb = np.zeros((self.raster.height, self.raster.width, 3), np.uint8)

    @property
    def pixel(self) -> float:
        return self.raster.pixel

    def add(self, xyz: np.ndarray, rgb8: np.ndarray | None) -> None:
        """Points (N × 3) and their 8-bit colours (N × 3) or None."""
        self.merge(self.raster.highest(xyz, rgb8))

    def merge(self, drawn: Drawn) -> None:
        higher = drawn.z > self.top.ravel()[drawn.pixels]
        pixels = drawn.pixels[higher]
        self.top.ravel()[pixels] = drawn.z[higher]
        if drawn.rgb is not None:
            self.rgb.reshape(-1, 3)[pixels] = drawn.rgb[higher]

    def save(self, path: Path, coloured: bool) -> dict[str, object]:
        from PIL import Image

        seen = np.isfinite(self.top)
        image = self.rgb if coloured else _relief(self.top, seen, self.pixel)
        alpha = np.where(seen, 255, 0).astype(np.uint8)
        picture = Image.fromarray(np.dstack([image, alpha]), "RGBA")
        width, height = self.raster.width, self.raster.height
        scale = self.size / max(width, height) if self.size else 1.0
        if scale > 1:  # nearest: no colour bleeds into the transparent pixels
            size = (round(width * scale), round(height * scale))
            picture = picture.resize(size, Image.Resampling.NEAREST)
        picture.save(path, optimize=True)
        return {"width": picture.width, "height": picture.height, "pixel_m": self.pixel,
                "coloured_by": "rgb" if coloured else "elevation", "filled": float(seen.mean())}  # fmt: skip


def colour_shift(colour_range: dict[str, int] | None) -> int:
    """How the cloud's 16-bit LAS colours become 8 bits: by their high byte, or as they are when the file
    stored 8-bit values in the 16-bit fields (its colours never pass 255). Decided once for the cloud,
    from its colour range, so every tile and node agrees."""
    return 8 if colour_range and colour_range["max"] > 255 else 0


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
