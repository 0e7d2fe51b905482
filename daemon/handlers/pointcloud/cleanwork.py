"""The clean and classify stages' work on one tile, each a picklable description called with the tile, so
tilework.in_parallel spreads the tiles over the cores. Each reads its tile (and its halo) from disk and
writes its answer for the tile's own points to `<folder>/<tile>.npy`, which later stages and tiles look
up; what it returns is small (sums, counts), for the job's process to add up.

- `Distances` (clean, first pass): each point's mean distance to its k nearest neighbours, exact at the
  tile's border (clean.widened), and the tile's sums for the cloud's outlier threshold.
- `Noise` (clean, second pass): the outliers over the threshold and ELM's low points, as classes.
- `Ground` (classify): CSF's ground over the tile and its halo, noise kept out of the cloth.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import laspy
import numpy as np

from . import clean as noise
from .classify import ground, ground_classes
from .params import CsfParams, ElmParams
from .tiling import Tiles


def xyz_of(records: laspy.ScaleAwarePointRecord) -> np.ndarray:
    return np.column_stack([records.x, records.y, records.z])


@dataclass(frozen=True)
class Distances:
    tiles: Tiles
    folder: Path
    k: int

    def __call__(self, tile: int) -> tuple[float, float, int]:
        """The tile's distances saved; their sum, sum of squares and count."""
        core, halo = xyz_of(self.tiles.load(tile)), xyz_of(self.tiles.load(tile, "halo"))
        first = noise.neighbour_distances(core, halo, self.k, self.tiles.room(tile, core))
        others = partial(self.tiles.gather, besides=tile)
        distances = noise.widened(first, core, self.k, others).mean_distance
        np.save(self.folder / f"{tile}.npy", distances)
        return float(distances.sum()), float(distances @ distances), len(distances)


@dataclass(frozen=True)
class Noise:
    tiles: Tiles
    distances: Path | None
    """The first pass's folder; None without the outlier test."""
    threshold: float | None
    elm: ElmParams | None
    origin: tuple[float, float]
    """ELM's grid anchor: the cloud's minimum corner (the same columns in every tile)."""
    folder: Path

    def __call__(self, tile: int) -> tuple[int, int]:
        """The tile's classes with noise saved; its low and high noise counts."""
        records = self.tiles.load(tile)
        core, halo = xyz_of(records), xyz_of(self.tiles.load(tile, "halo"))
        classes = np.asarray(records.classification).copy()
        flagged = np.zeros(len(core), bool)
        if self.distances is not None and self.threshold is not None:
            flagged = noise.statistical_outliers(np.load(self.distances / f"{tile}.npy"), self.threshold)
        everything = np.concatenate([core, halo])
        classes[flagged] = noise.noise_classes(core[flagged], everything)
        if self.elm is not None:
            low = noise.extended_local_minimum(everything, self.origin, self.elm.cell, self.elm.threshold)
            classes[low[: len(core)] & ~flagged] = noise.LOW_NOISE
        np.save(self.folder / f"{tile}.npy", classes)
        return int((classes == noise.LOW_NOISE).sum()), int((classes == noise.HIGH_NOISE).sum())


@dataclass(frozen=True)
class Ground:
    tiles: Tiles
    cleaned: Path
    """The clean stage's classes (`<tile>.npy`)."""
    csf: CsfParams | None
    """None: no ground test (the classes pass on as they are)."""
    folder: Path

    def __call__(self, tile: int) -> np.ndarray:
        """The tile's classes with ground saved; its class histogram (256 counts)."""
        classes = np.load(self.cleaned / f"{tile}.npy")
        if self.csf is not None:
            here = noise.is_noise(classes)
            # the halo's noise as its own tile's clean stage found it: noise would pull the cloth down
            cleaned = self.tiles.looked_up(tile, lambda t: np.load(self.cleaned / f"{t}.npy"))
            halo_noise = noise.is_noise(cleaned)
            core, halo = xyz_of(self.tiles.load(tile)), xyz_of(self.tiles.load(tile, "halo"))
            on_ground = np.zeros(len(core), bool)
            on_ground[~here] = ground(core[~here], halo[~halo_noise], self.csf)
            classes = ground_classes(classes, on_ground, here)
        np.save(self.folder / f"{tile}.npy", classes)
        return np.bincount(classes, minlength=256)
