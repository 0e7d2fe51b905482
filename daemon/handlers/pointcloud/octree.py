"""The cloud's octree: which node of a COPC hierarchy each point belongs to, decided tile by tile.

The cube holds the cloud; a node at depth d is one of 8^d sub-cubes, divided in GRID³ cells. Each node
keeps the first point (in a fixed pseudo-random order) of every cell of its own and passes the others
down to its children; a node with at most LEAF_POINTS left keeps them all. So each node is an even
sample at its own spacing (2 × halfsize / GRID / 2^d) and a viewer draws the coarse levels first.

The cloud is processed by tiles: the XY footprints of the nodes at `tile_depth`. A tile's side is a
whole number of cells at every depth (GRID · 2^d ≥ 2^tile_depth), so no cell straddles two tiles and
each tile decides its points' nodes exactly as one pass over the whole cloud would. Nodes above the
tiles' depth gather points from several tiles; their leaf rule is never applied (they always sample),
which only adds nodes in sparse corners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GRID = 128
"""Cells per node side: a node of a surface-like scan keeps roughly GRID² points (COPC writers use 128)."""

LEAF_POINTS = 100_000
"""A node with no more points left than this keeps them all."""

TILE_POINTS = 1_000_000
"""Points a tile should hold on average (its working set is a few hundred MB)."""

MAX_DEPTH = 13
"""Deepest level: a cell key of three axes at GRID · 2^13 cells each (21 bits) fits in 63 bits; its
cells are 1/10⁶ of the cube's side (1 cm in a 10 km survey)."""


@dataclass(frozen=True)
class Octree:
    center: tuple[float, float, float]
    halfsize: float
    tile_depth: int

    @classmethod
    def around(
        cls, mins: np.ndarray, maxs: np.ndarray, points: int, step: float, tile_points: int = TILE_POINTS
    ) -> Octree:
        """The cube around the bounds (a margin of one integer `step` so the maximum lies inside), with
        tiles deep enough that each holds about `tile_points` on average (4^depth tiles in XY)."""
        center = (np.asarray(mins, float) + np.asarray(maxs, float)) / 2
        halfsize = float(np.max(np.asarray(maxs) - np.asarray(mins))) / 2 + 2 * step
        depth = min(7, max(0, math.ceil(math.log(max(points, 1) / tile_points, 4))))
        return cls((float(center[0]), float(center[1]), float(center[2])), halfsize, depth)

    @property
    def spacing(self) -> float:
        """The root's cell size (COPC's `spacing`)."""
        return 2 * self.halfsize / GRID

    def cells(self, xyz: np.ndarray, depth: int) -> np.ndarray:
        """Integer cell coordinates (N × 3) of `xyz` at `depth`."""
        per_axis = GRID << depth
        low = np.asarray(self.center) - self.halfsize
        ints = np.floor((xyz - low) * (per_axis / (2 * self.halfsize))).astype(np.int64)
        return np.clip(ints, 0, per_axis - 1)

    def tiles(self, xy: np.ndarray) -> np.ndarray:
        """The tile index (x * 2^tile_depth + y) of each point."""
        side = 1 << self.tile_depth
        at_root = self.cells(np.column_stack([xy, np.full(len(xy), self.center[2])]), 0)[:, :2]
        cells = at_root // (GRID // side)
        return cells[:, 0] * side + cells[:, 1]


def priority(ints: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random rank per point, from its integer coordinates (the same point ranks the same
    in any tile, on any attempt); the low 24 bits are the point's index, so ranks are unique (copies of
    one point rank by their order)."""
    mixed = (
        (ints[:, 0].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        ^ (ints[:, 1].astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
        ^ (ints[:, 2].astype(np.uint64) * np.uint64(0x165667B19E3779F9))
    )
    mixed ^= mixed >> np.uint64(29)
    index = np.arange(len(ints), dtype=np.uint64) & np.uint64(0xFFFFFF)
    return (mixed & ~np.uint64(0xFFFFFF)) | index


def assign_nodes(octree: Octree, xyz: np.ndarray, ints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point's node as (depth, key) where key is the node's x, y, z index packed in an int64
    (`unpack`), for the points of one tile.

    One sort: points ordered by the Morton code of their cell at MAX_DEPTH have every cell of every
    coarser level, and every node, as a contiguous run; each level then finds its runs' highest-priority
    point and its nodes' sizes in linear passes."""
    fine = octree.cells(xyz, MAX_DEPTH)
    order = np.argsort(_morton(fine), kind="stable")
    fine, rank = fine[order], priority(ints)[order]
    depth = np.full(len(xyz), -1, np.int16)
    key = np.zeros(len(xyz), np.int64)
    left = np.arange(len(xyz))
    for level in range(MAX_DEPTH + 1):
        if len(left) == 0:
            break
        cells = fine[left] >> (MAX_DEPTH - level)
        nodes = _pack(cells // GRID, level)
        keep = np.zeros(len(left), bool)
        if level >= octree.tile_depth:  # a node wholly inside this tile: the leaf rule applies
            keep |= _run_sizes(nodes) <= LEAF_POINTS
        if level == MAX_DEPTH:
            keep[:] = True
        keep |= _run_firsts(_pack(cells, level + 7), rank[left])
        depth[order[left[keep]]], key[order[left[keep]]] = level, nodes[keep]
        left = left[~keep]
    return depth, key


def _morton(cells: np.ndarray) -> np.ndarray:
    """The Morton (Z-order) code of cells of up to 21 bits an axis: their bits interleaved x, y, z."""
    code = np.zeros(len(cells), np.uint64)
    for axis in range(3):
        spread = cells[:, axis].astype(np.uint64)
        for shift, mask in ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
                            (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249)):  # fmt: skip
            spread = (spread | (spread << np.uint64(shift))) & np.uint64(mask)
        code |= spread << np.uint64(2 - axis)
    return code


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The starts of the runs of equal `keys`, and each element's run."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return starts, np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(keys)]))


def _run_sizes(keys: np.ndarray) -> np.ndarray:
    """Each element's run length."""
    starts, run = _runs(keys)
    return np.diff(np.r_[starts, len(keys)])[run]


def _run_firsts(keys: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Whether each element has the lowest rank of its run (ranks are unique: one per run)."""
    starts, run = _runs(keys)
    return rank == np.minimum.reduceat(rank, starts)[run]


def _pack(cells: np.ndarray, bits_level: int) -> np.ndarray:
    bits = bits_level + 1  # enough for GRID << level / GRID … or GRID << level cells per axis
    return (cells[:, 0] << (2 * bits)) | (cells[:, 1] << bits) | cells[:, 2]


def pack(x: int, y: int, z: int, depth: int) -> int:
    """A node's key from its x, y, z index at `depth` (as `assign_nodes` packs them)."""
    bits = depth + 1
    return (x << (2 * bits)) | (y << bits) | z


def unpack(key: int, depth: int) -> tuple[int, int, int]:
    bits = depth + 1
    mask = (1 << bits) - 1
    return (key >> (2 * bits)) & mask, (key >> bits) & mask, key & mask
