"""`cloud.copc.laz`: a Cloud Optimized Point Cloud (COPC 1.0) written by copclib from the cloud's tiles.

Each tile's points are placed in their octree nodes (octree.py); a node below the tiles' depth lies in
one tile and is compressed and written at once, a node above it gathers points from several tiles in a
spill file and is written at the end. Memory is one tile's points, whatever the cloud's size.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import copclib
import laspy
import numpy as np

from .octree import Octree, assign_nodes, unpack
from .source import Frame


def write_copc(
    path: Path,
    tiles: Iterable[laspy.ScaleAwarePointRecord],
    *,
    octree: Octree,
    frame: Frame,
    point_format: laspy.PointFormat,
    bounds: tuple[np.ndarray, np.ndarray],
    wkt: str | None,
    spill: Path,
) -> dict[str, Any]:
    """Write every tile's points (canonical records in `frame`) as a COPC file; its summary."""
    writer = copclib.FileWriter(str(path), _config(octree, frame, point_format, bounds, wkt))
    spill.mkdir(parents=True, exist_ok=True)
    shallow: set[tuple[int, int]] = set()
    nodes = points = 0
    depths: dict[int, int] = {}
    try:
        for records in tiles:
            if len(records) == 0:
                continue
            xyz = np.column_stack([records.x, records.y, records.z])
            ints = np.column_stack([records.X, records.Y, records.Z])
            depth, key = assign_nodes(octree, xyz, ints)
            for (level, node), members in _groups(depth, key):
                data = records.array[members]
                if level < octree.tile_depth:  # gathered from several tiles: written at the end
                    with (spill / f"{level}-{node}.bin").open("ab") as out:
                        out.write(data.tobytes())
                    shallow.add((level, node))
                    continue
                _add(writer, level, node, data)
                nodes, points, depths[level] = nodes + 1, points + len(data), depths.get(level, 0) + 1
        for level, node in sorted(shallow):
            data = np.fromfile(spill / f"{level}-{node}.bin", dtype=point_format.dtype())
            _add(writer, level, node, data)
            nodes, points, depths[level] = nodes + 1, points + len(data), depths.get(level, 0) + 1
            (spill / f"{level}-{node}.bin").unlink()
    finally:
        writer.Close()
    per_depth = {str(d): n for d, n in sorted(depths.items())}
    return {"points": points, "nodes": nodes, "nodes_per_depth": per_depth, "spacing": octree.spacing,
            "halfsize": octree.halfsize, "center": list(octree.center)}  # fmt: skip


def _config(
    octree: Octree, frame: Frame, point_format: laspy.PointFormat, bounds: tuple[np.ndarray, np.ndarray],
    wkt: str | None,
) -> copclib.CopcConfigWriter:  # fmt: skip
    config = copclib.CopcConfigWriter(
        point_format.id, copclib.Vector3(*frame.scale), copclib.Vector3(*frame.offset), wkt or ""
    )
    header = config.las_header
    header.min, header.max = copclib.Vector3(*map(float, bounds[0])), copclib.Vector3(*map(float, bounds[1]))
    header.generating_software = "capture-daemon pointcloud"
    info = config.copc_info
    info.center_x, info.center_y, info.center_z = octree.center
    info.halfsize, info.spacing = octree.halfsize, octree.spacing
    return config


def _groups(depth: np.ndarray, key: np.ndarray) -> Iterable[tuple[tuple[int, int], np.ndarray]]:
    """(depth, key) → the indices of its points, node by node."""
    order = np.lexsort((key, depth))
    d, k = depth[order], key[order]
    starts = np.flatnonzero(np.r_[True, (d[1:] != d[:-1]) | (k[1:] != k[:-1])])
    ends = np.r_[starts[1:], len(order)]
    for start, end in zip(starts, ends, strict=True):
        yield (int(d[start]), int(k[start])), order[start:end]


def _add(writer: copclib.FileWriter, level: int, node: int, data: np.ndarray) -> None:
    x, y, z = unpack(node, level)
    raw = copclib.VectorChar(np.ascontiguousarray(data).view(np.int8).reshape(-1))
    writer.AddNode(copclib.VoxelKey(level, x, y, z), raw)
