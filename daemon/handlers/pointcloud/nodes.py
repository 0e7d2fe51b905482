"""The finished points placed in their octree nodes (octree.py), tile by tile: the one hierarchy both
outputs are written from, the COPC (copc.py) node for node and the 3D Tiles tileset (tiles3d.py) tile for
node.

A node at or below the tiles' depth lies in one tile: it is complete when its tile has been placed and
is handed on at once. A node above it gathers points from several tiles: each tile's share is spilled
to its own file (`<spill>/<depth>-<key>/<tile>.bin`, so tiles placed in parallel never write one file)
and the node is handed on at the end, its shares read back in tile order. Memory is one tile's points.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np

from .octree import Octree, assign_nodes


@dataclass(frozen=True)
class Node:
    depth: int
    key: int
    """The node's x, y, z index packed (octree.unpack)."""
    points: np.ndarray
    """Its canonical records (a structured array of the cloud's point format)."""


def placed(tile: int, records: laspy.ScaleAwarePointRecord, octree: Octree, spill: Path) -> Iterator[Node]:
    """One tile's complete nodes; its shares of the shallower nodes spilled for `gathered`."""
    if len(records) == 0:
        return
    xyz = np.column_stack([records.x, records.y, records.z])
    ints = np.column_stack([records.X, records.Y, records.Z])
    depth, key = assign_nodes(octree, xyz, ints)
    for (level, node), members in _groups(depth, key):
        data = records.array[members]
        if level < octree.tile_depth:  # gathered from several tiles: handed on at the end
            folder = spill / f"{level}-{node}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{tile}.bin").write_bytes(np.ascontiguousarray(data).tobytes())
            continue
        yield Node(level, node, data)


def gathered(spill: Path, dtype: np.dtype) -> Iterator[Node]:
    """The nodes above the tiles' depth, from every tile's spilled share, coarsest first."""
    if not spill.exists():
        return
    found = sorted(tuple(int(v) for v in p.name.split("-")) for p in spill.iterdir() if p.is_dir())
    for level, node in found:
        folder = spill / f"{level}-{node}"
        shares = sorted(folder.glob("*.bin"), key=lambda p: int(p.stem))
        yield Node(level, node, np.concatenate([np.fromfile(p, dtype) for p in shares]))
        shutil.rmtree(folder)


def _groups(depth: np.ndarray, key: np.ndarray) -> Iterable[tuple[tuple[int, int], np.ndarray]]:
    """(depth, key) → the indices of its points, node by node."""
    order = np.lexsort((key, depth))
    d, k = depth[order], key[order]
    starts = np.flatnonzero(np.r_[True, (d[1:] != d[:-1]) | (k[1:] != k[:-1])])
    ends = np.r_[starts[1:], len(order)]
    for start, end in zip(starts, ends, strict=True):
        yield (int(d[start]), int(k[start])), order[start:end]
