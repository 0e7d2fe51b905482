"""The manifest's `analysis`: what `pdal info --metadata` tells a surveyor, from the read stage's tally
and header facts, plus the coordinate system (EPSG code and WKT), the bounds in WGS84 when the system is
known, and density and spacing measured on a sample of the points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import laspy
import numpy as np

from .params import PointcloudParams
from .stats import spacing

SAMPLE_POINTS = 200_000
"""Points the spacing is measured on (every n-th point of the cloud: a uniform sample)."""


def describe(
    read: dict[str, Any],
    chunks: Callable[[], Iterator[laspy.ScaleAwarePointRecord]],
    params: PointcloudParams,
) -> dict[str, Any]:
    tally = read["tally"]
    low, high = np.array(tally["bounds"]["min"]), np.array(tally["bounds"]["max"])
    area = float(np.prod(high[:2] - low[:2]))
    return {
        **{k: v for k, v in read["source"].items() if k != "name"},
        **tally,
        "srs": _srs(read["srs_wkt"], params.srs_in, low, high),
        "density": spacing(_sample(chunks, tally["points"]), area, tally["points"]),
    }


def _sample(chunks: Callable[[], Iterator[laspy.ScaleAwarePointRecord]], points: int) -> np.ndarray:
    step = max(1, points // SAMPLE_POINTS)
    picked = [np.column_stack([c.x, c.y, c.z])[::step] for c in chunks()]
    return np.concatenate(picked) if picked else np.zeros((0, 3))


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
