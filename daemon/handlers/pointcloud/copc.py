"""`cloud.copc.laz`: a Cloud Optimized Point Cloud (COPC 1.0) written by copclib, node by node as the
octree places them (nodes.py).

A node's points are compressed (LASzip, by copclib's `CompressBytes`) where the node is made, which may
be a worker process placing tiles in parallel (tilework.py), and the one writer in the job's process
adds the compressed chunk: the file is written by one hand, the work spread over the cores.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import copclib
import laspy
import numpy as np

from .nodes import Node, gathered, placed
from .octree import Octree, unpack
from .source import Frame


def compressed(node: Node, point_format_id: int) -> bytes:
    """The node's points as one LASzip chunk."""
    raw = copclib.VectorChar(np.ascontiguousarray(node.points).view(np.int8).reshape(-1))
    return np.asarray(copclib.CompressBytes(raw, point_format_id, 0), np.int8).tobytes()


class CopcFile:
    """The COPC being written: nodes added in any order, the hierarchy and header written on `close`."""

    def __init__(self, path: Path, *, octree: Octree, frame: Frame, point_format: laspy.PointFormat,
                 bounds: tuple[np.ndarray, np.ndarray], wkt: str | None) -> None:  # fmt: skip
        self.octree, self.point_format = octree, point_format
        self._writer = copclib.FileWriter(str(path), _config(octree, frame, point_format, bounds, wkt))
        self.nodes = self.points = 0
        self.depths: dict[int, int] = {}

    def add(self, node: Node) -> None:
        self.add_compressed(node.depth, node.key, compressed(node, self.point_format.id), len(node.points))

    def add_compressed(self, depth: int, key: int, chunk: bytes, count: int) -> None:
        x, y, z = unpack(key, depth)
        data = copclib.VectorChar(np.frombuffer(chunk, np.int8))
        self._writer.AddNodeCompressed(copclib.VoxelKey(depth, x, y, z), data, count)
        self.nodes, self.points = self.nodes + 1, self.points + count
        self.depths[depth] = self.depths.get(depth, 0) + 1

    def close(self) -> dict[str, Any]:
        self._writer.Close()
        return {"points": self.points, "nodes": self.nodes,
                "nodes_per_depth": {str(d): n for d, n in sorted(self.depths.items())},
                "spacing": self.octree.spacing, "halfsize": self.octree.halfsize,
                "center": list(self.octree.center)}  # fmt: skip


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
    """Every tile's points (canonical records in `frame`) as a COPC file, in this process; its summary."""
    copc = CopcFile(path, octree=octree, frame=frame, point_format=point_format, bounds=bounds, wkt=wkt)
    try:
        for tile, records in enumerate(tiles):
            for node in placed(tile, records, octree, spill):
                copc.add(node)
        for node in gathered(spill, point_format.dtype()):
            copc.add(node)
    finally:
        summary = copc.close()
    return summary


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
