"""The manifest's `analysis`: what `pdal info --metadata` tells a surveyor, from the read stage's tally
and header facts, plus the coordinate system (EPSG code and WKT), the bounds in WGS84 when the system is
known, and density and spacing measured on a sample of the points.
"""

from __future__ import annotations

from typing import Any

import laspy
import numpy as np

from .params import PointcloudParams
from .stats import spacing

SAMPLE_POINTS = 200_000
"""Points the spacing is measured on, about (an even sample of the cloud)."""

GOLDEN = (5**0.5 - 1) / 2


def describe(
    read: dict[str, Any],
    sample: np.ndarray,
    params: PointcloudParams,
) -> dict[str, Any]:
    tally = read["tally"]
    low, high = np.array(tally["bounds"]["min"]), np.array(tally["bounds"]["max"])
    area = float(np.prod(high[:2] - low[:2]))
    return {
        **{k: v for k, v in read["source"].items() if k != "name"},
        **tally,
        "srs": _srs(read["srs_wkt"], params.srs_in, low, high),
        "density": spacing(sample, area, tally["points"]),
    }


class Sample:
    """An even sample of the points as they stream past in the read stage, about SAMPLE_POINTS of them,
    for `spacing`: each point is kept when its golden-ratio rank (index × φ mod 1) is under the rate,
    and the rate halves (dropping the kept points over the new rate) whenever the sample grows past
    twice the target, so a text table whose count was only estimated cannot make it the cloud's size."""

    def __init__(self, expected_points: int) -> None:
        self.rate = min(1.0, SAMPLE_POINTS / max(expected_points, 1))
        self.seen = 0
        self.kept: list[np.ndarray] = []

    def add(self, chunk: laspy.ScaleAwarePointRecord) -> None:
        rank = (np.arange(self.seen, self.seen + len(chunk)) * GOLDEN) % 1.0
        self.seen += len(chunk)
        keep = rank < self.rate
        self.kept.append(np.column_stack([chunk.x, chunk.y, chunk.z, rank])[keep])
        if sum(len(k) for k in self.kept) > 2 * SAMPLE_POINTS:
            self.rate /= 2
            whole = np.concatenate(self.kept)
            self.kept = [whole[whole[:, 3] < self.rate]]

    def points(self) -> np.ndarray:
        """The sample (N × 3)."""
        return np.concatenate(self.kept)[:, :3] if self.kept else np.zeros((0, 3))


def _srs(wkt: str | None, srs_in: int | None, low: np.ndarray, high: np.ndarray) -> dict[str, Any] | None:
    """The coordinate system: the file's, or `srs_in` when given (it overrides a file that is wrong);
    None when neither says. With it, the bounds' corners in WGS84 longitude and latitude."""
    from pyproj import CRS, Transformer

    if srs_in is not None:
        crs = CRS.from_epsg(srs_in)
    elif wkt is not None:
        crs = CRS.from_wkt(wkt)
    else:
        return None
    described: dict[str, Any] = {"epsg": crs.to_epsg(), "name": crs.name, "wkt": crs.to_wkt(),
                                 "source": "srs_in" if srs_in is not None else "file"}  # fmt: skip
    if crs.is_geographic or crs.is_projected:
        to_wgs84 = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
        xs, ys = np.array([low[0], high[0], low[0], high[0]]), np.array([low[1], low[1], high[1], high[1]])
        lon, lat = to_wgs84.transform(xs, ys)
        if np.all(np.isfinite(lon)) and np.all(np.isfinite(lat)):
            described["wgs84_bounds"] = {"min": [float(np.min(lon)), float(np.min(lat))],
                                         "max": [float(np.max(lon)), float(np.max(lat))]}  # fmt: skip
    return described
