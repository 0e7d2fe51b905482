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

TILE_POINTS = 4_000_000
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


def sample_order(ints: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random order of points, from their integer coordinates (the same point always
    ranks the same, in any tile, on any attempt)."""
    mixed = (
        (ints[:, 0].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        ^ (ints[:, 1].astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
        ^ (ints[:, 2].astype(np.uint64) * np.uint64(0x165667B19E3779F9))
    )
    mixed ^= mixed >> np.uint64(29)
    return np.argsort(mixed, kind="stable")


def assign_nodes(octree: Octree, xyz: np.ndarray, ints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point's node as (depth, key) where key is the node's x, y, z index packed in an int64
    (`unpack`), for the points of one tile."""
    order = sample_order(ints)
    xyz = xyz[order]
    depth = np.full(len(xyz), -1, np.int16)
    key = np.zeros(len(xyz), np.int64)
    left = np.arange(len(xyz))
    for level in range(MAX_DEPTH + 1):
        if len(left) == 0:
            break
        cells = octree.cells(xyz[left], level)
        nodes = _pack(cells // GRID, level)
        keep = np.zeros(len(left), bool)
        if level >= octree.tile_depth:  # a node wholly inside this tile: the leaf rule applies
            _, node_of, counts = np.unique(nodes, return_inverse=True, return_counts=True)
            keep |= counts[node_of] <= LEAF_POINTS
        if level == MAX_DEPTH:
            keep[:] = True
        _, first = np.unique(_pack(cells, level + 7), return_index=True)  # first in order, per cell
        keep[first] = True
        depth[left[keep]], key[left[keep]] = level, nodes[keep]
        left = left[~keep]
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return depth[back], key[back]


def _pack(cells: np.ndarray, bits_level: int) -> np.ndarray:
    bits = bits_level + 1  # enough for GRID << level / GRID … or GRID << level cells per axis
    return (cells[:, 0] << (2 * bits)) | (cells[:, 1] << bits) | cells[:, 2]


def unpack(key: int, depth: int) -> tuple[int, int, int]:
    bits = depth + 1
    mask = (1 << bits) - 1
    return (key >> (2 * bits)) & mask, (key >> bits) & mask, key & mask
