"""The analysis a surveyor gets from `pdal info --metadata`, gathered chunk by chunk as the points stream
past (`Tally`), so it costs no pass of its own: count, bounds, return and classification histograms,
intensity and colour ranges. Density and spacing need neighbours: `spacing` measures them on a sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import laspy
import numpy as np

from ...errors import InputError


@dataclass
class Tally:
    """Running totals over canonical chunks (source.py)."""

    points: int = 0
    mins: np.ndarray = field(default_factory=lambda: np.full(3, np.inf))
    maxs: np.ndarray = field(default_factory=lambda: np.full(3, -np.inf))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    returns: np.ndarray = field(default_factory=lambda: np.zeros(16, np.int64))
    intensity: list[Any] = field(default_factory=lambda: [2**16, -1])
    colour: list[Any] = field(default_factory=lambda: [2**16, -1])
    gps_time: list[Any] = field(default_factory=lambda: [np.inf, -np.inf])

    def add(self, chunk: laspy.ScaleAwarePointRecord) -> None:
        if len(chunk) == 0:
            return
        xyz = np.stack([chunk.x, chunk.y, chunk.z], axis=1)
        self.points += len(chunk)
        self.mins = np.minimum(self.mins, xyz.min(axis=0))
        self.maxs = np.maximum(self.maxs, xyz.max(axis=0))
        self.classes += np.bincount(np.asarray(chunk.classification), minlength=256)
        self.returns += np.bincount(np.asarray(chunk.return_number), minlength=16)[:16]
        self.intensity = _widened(self.intensity, np.asarray(chunk.intensity))
        self.gps_time = _widened(self.gps_time, np.asarray(chunk.gps_time))
        if "red" in chunk.point_format.dimension_names:
            self.colour = _widened(self.colour, np.stack([chunk.red, chunk.green, chunk.blue]))

    def check(self, name: str) -> None:
        """What makes a cloud unusable, once every point has been seen: none (`empty_cloud`), or all at
        one place (`degenerate_cloud`: no surface, no extent to tile)."""
        if self.points == 0:
            raise InputError(f"{name}: the cloud has no points", code="empty_cloud")
        if float((self.maxs - self.mins)[:2].max()) <= 0:
            raise InputError(
                f"{name}: all {self.points:,} points lie at one place ({self.mins.tolist()})",
                code="degenerate_cloud",
            )

    def report(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "bounds": {"min": self.mins.tolist(), "max": self.maxs.tolist()},
            "classification": {str(c): int(n) for c, n in enumerate(self.classes) if n},
            "returns": {str(r): int(n) for r, n in enumerate(self.returns) if n},
            "intensity": _range(self.intensity),
            "colour": _range(self.colour),
            "gps_time": _range(self.gps_time),
        }


def _widened(span: list[Any], values: np.ndarray) -> list[Any]:
    kind = float if values.dtype.kind == "f" else int
    return [min(span[0], kind(values.min())), max(span[1], kind(values.max()))]


def _range(span: list[Any]) -> dict[str, Any] | None:
    """{min, max}, or None for a field no chunk had (its span still the empty one)."""
    return None if span[0] > span[1] else {"min": span[0], "max": span[1]}


def spacing(xyz: np.ndarray, area_m2: float, points: int) -> dict[str, float]:
    """Density over the footprint (points per m² of the XY bounding box, as `pdal info` reports it) and
    the median distance from a point to its nearest neighbour, measured on `xyz`, a uniform sample of
    the cloud (the nearest neighbour within the sample, scaled by √(sample share) to the whole cloud's)."""
    from pykdtree.kdtree import KDTree

    if len(xyz) < 2:
        return {"density_per_m2": 0.0, "spacing_m": 0.0}
    offset = xyz.mean(axis=0)
    tree = KDTree(xyz - offset)
    distances, _ = tree.query(xyz - offset, k=2)
    nearest = distances[:, 1]
    scale = np.sqrt(len(xyz) / max(points, 1))  # sparser sample → farther neighbours, by √ of the share
    return {
        "density_per_m2": points / area_m2 if area_m2 > 0 else 0.0,
        "spacing_m": float(np.median(nearest[nearest > 0]) * scale) if (nearest > 0).any() else 0.0,
    }
