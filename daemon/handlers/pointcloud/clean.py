"""Noise, found with PDAL's semantics and classified rather than deleted (7 low noise, 18 high noise).

- Statistical outliers (filters.outlier, method "statistical"): each point's mean distance to its
  `mean_k` nearest neighbours (itself excluded); a point whose mean exceeds the whole cloud's mean of
  those distances by `multiplier` sample standard deviations is noise. The mean and deviation are the
  cloud's, so the distances of every tile are measured first (`neighbour_distances`) and judged after
  (`statistical_outliers`). PDAL marks every outlier 7; here one above the surface under it (the median
  height of its nearest points in plan, `noise_classes`) is high noise (18: birds, multipath), one
  below it low noise (7). In plan, not in space: a bird's nearest points in space may be other birds.
- Extended local minimum (filters.elm): in each `cell` × `cell` column (the grid anchored at the
  cloud's minimum corner), the lowest point is low noise when the next lowest is more than
  `threshold` above it, and so on up the column until one is not.

Both work on a tile's points with its halo (tiling.py) and answer for the tile's own points only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

LOW_NOISE, HIGH_NOISE = 7, 18


def is_noise(classes: np.ndarray) -> np.ndarray:
    """Which of these classes are noise, low or high."""
    return np.isin(classes, (LOW_NOISE, HIGH_NOISE))


@dataclass(frozen=True)
class Neighbourhoods:
    """For a tile's own points: the mean distance to their k nearest neighbours, and whether the halo
    was wide enough to be sure of them."""

    mean_distance: np.ndarray
    farthest: np.ndarray
    """The distance to the k-th neighbour found."""
    complete: np.ndarray
    """False where the k-th neighbour is farther than the halo's edge: a nearer point could lie outside
    tile and halo. The caller widens the neighbourhood for these (rare: isolated points at an edge)."""


def neighbour_distances(
    core: np.ndarray, halo: np.ndarray, k: int, room: np.ndarray | None = None
) -> Neighbourhoods:
    """`core` and `halo` are N × 3 coordinates; `room` is each core point's distance to the edge of
    what it can see (its tile's edge plus the halo), None for "everything is here"."""
    from pykdtree.kdtree import KDTree

    everything = np.concatenate([core, halo]) if len(halo) else core
    centre = everything.mean(axis=0)
    tree = KDTree(everything - centre)
    want = min(k + 1, len(everything))
    distances, indices = tree.query(core - centre, k=want)
    distances, indices = distances.reshape(len(core), want)[:, 1:], indices.reshape(len(core), want)[:, 1:]
    mean = distances.mean(axis=1) if distances.shape[1] else np.zeros(len(core))
    farthest = distances[:, -1] if distances.shape[1] else np.zeros(len(core))
    complete = np.ones(len(core), bool) if room is None else farthest <= room
    return Neighbourhoods(mean.astype(np.float64), farthest, complete)


def widened(
    found: Neighbourhoods, core: np.ndarray, k: int, others: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> Neighbourhoods:
    """`found` with its incomplete neighbourhoods measured again against every point of the cloud within
    reach: the k-th neighbour found bounds the true one's distance, so the points within that distance
    (the tile's own, and `others(low, high)`: the other tiles' points in an XY rectangle, N × 3) hold
    the true k nearest."""
    todo = np.flatnonzero(~found.complete)
    if len(todo) == 0:
        return found
    centres, reach = core[todo, :2], found.farthest[todo]
    low, high = centres.min(axis=0) - reach.max(), centres.max(axis=0) + reach.max()
    # (the points asked about come first: `neighbour_distances` skips each itself)
    pool = np.concatenate([np.delete(core, todo, axis=0), others(low, high)])
    again = neighbour_distances(core[todo], pool[_within_reach(pool[:, :2], centres, reach)], k)
    mean, farthest = found.mean_distance.copy(), found.farthest.copy()
    mean[todo], farthest[todo] = again.mean_distance, again.farthest
    return replace(found, mean_distance=mean, farthest=farthest, complete=np.ones(len(core), bool))


def _within_reach(xy: np.ndarray, centres: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Which of the points `xy` may lie within its `reach` of one of the `centres` (a superset: the
    points in the grid cells each centre's square of side 2 × reach overlaps, the cells a quarter of
    the longest reach). One tree over these few, not over every point in the squares' bounding box."""
    cell = max(float(reach.max()) / 4, 1e-9)
    origin = centres.min(axis=0) - reach.max()
    first = np.floor((centres - reach[:, None] - origin) / cell).astype(np.int64)
    last = np.floor((centres + reach[:, None] - origin) / cell).astype(np.int64)
    rows = int(last[:, 1].max()) + 1
    marked = np.unique(np.concatenate([
        (np.arange(f[0], e[0] + 1)[:, None] * rows + np.arange(f[1], e[1] + 1)[None, :]).ravel()
        for f, e in zip(first, last, strict=True)
    ]))  # fmt: skip
    at = np.floor((xy - origin) / cell).astype(np.int64)
    inside = (at >= 0).all(axis=1) & (at[:, 1] < rows)
    return inside & np.isin(at[:, 0] * rows + at[:, 1], marked)


def outlier_threshold(total: float, total_squares: float, count: int, multiplier: float) -> float:
    """The cloud's mean of the mean distances plus `multiplier` sample standard deviations (PDAL's)."""
    mean = total / count
    variance = max(0.0, (total_squares - count * mean * mean) / max(count - 1, 1))
    return mean + multiplier * float(np.sqrt(variance))


def statistical_outliers(mean_distance: np.ndarray, threshold: float) -> np.ndarray:
    """Which points the outlier test makes noise, from their mean neighbour distances."""
    return np.asarray(mean_distance > threshold)


def noise_classes(noise: np.ndarray, everything: np.ndarray, k: int = 16) -> np.ndarray:
    """HIGH_NOISE or LOW_NOISE for each of the `noise` points (N × 3): above or below the median height
    of the `k` points of `everything` (the tile and its halo) nearest to it in plan."""
    from pykdtree.kdtree import KDTree

    if len(noise) == 0:
        return np.zeros(0, np.uint8)
    centre = everything[:, :2].mean(axis=0)
    tree = KDTree(np.ascontiguousarray(everything[:, :2] - centre))
    want = min(k, len(everything))
    _, indices = tree.query(np.ascontiguousarray(noise[:, :2] - centre), k=want)
    surface = np.median(everything[:, 2][indices.reshape(len(noise), want)], axis=1)
    return np.where(noise[:, 2] > surface, HIGH_NOISE, LOW_NOISE).astype(np.uint8)


def extended_local_minimum(
    xyz: np.ndarray, origin: tuple[float, float], cell: float, threshold: float
) -> np.ndarray:
    """Which of the points in `xyz` are low noise by ELM (columns of `cell` metres from `origin`)."""
    if len(xyz) == 0:
        return np.zeros(0, bool)
    columns = np.floor((xyz[:, :2] - np.asarray(origin)) / cell).astype(np.int64)
    column = (columns[:, 0] << 32) + columns[:, 1]
    order = np.lexsort((xyz[:, 2], column))
    z, column = xyz[order, 2], column[order]
    starts = np.flatnonzero(np.r_[True, column[1:] != column[:-1]])
    same_next = np.r_[column[1:] == column[:-1], False]
    gap_over = np.r_[np.diff(z) > threshold, False] & same_next
    # a point is noise while every gap from its column's lowest point up to it is over the threshold
    position = np.arange(len(z))
    stop = np.minimum.reduceat(np.where(gap_over, len(z), position), starts)
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(z)]))
    noise = np.zeros(len(z), bool)
    noise[order] = position < stop[group]
    return noise
