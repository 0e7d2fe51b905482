"""`tiles/`: a 3D Tiles 1.0 tileset of the cloud, tile for node the COPC's octree (nodes.py), each node's
points in a `.pnts` (py3dtiles' `Pnts`, the format library of the replaced worker's tool).

- Refinement ADD, as COPC's levels are: a node's points are not repeated in its children, so a viewer
  draws the coarse sample first and adds detail where it looks. A node's geometric error is ten times
  its cell size (its sample's spacing: py3dtiles' rule, so a viewer refines before the gaps between
  points show); a leaf's is 0. A subtree too large for one JSON goes to an external tileset.
- Placement: a cloud with a known coordinate system goes to EPSG:4978 (Earth-centred, which CesiumJS
  expects) by pyproj, point by point, and is stored in a local east-north-up frame at its centre that
  the root tile's `transform` places on the globe: boxes stay tight to the survey and level with it.
  One without stays in its own coordinates about its centre, unplaced.
- Each `.pnts` holds float32 positions relative to its own box's centre (`RTC_CENTER`), precise to
  well under a millimetre within a node; RGB as 8 bits; Classification and Intensity in its batch table,
  for a viewer to style by.

The `.pnts` files are written where nodes are made, possibly in worker processes (tilework.py); each
returns its node's box, and the tileset's hierarchy is written from those at the end (`TilesetIndex`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .nodes import Node
from .octree import GRID, Octree, pack, unpack

ECEF = 4978

SPLIT_BYTES = 100_000
"""A subtree whose JSON is larger goes to an external tileset (py3dtiles' threshold)."""


@dataclass(frozen=True)
class Placement:
    """Where the tileset's local frame lies: the cloud's coordinate system (WKT; None: unplaced), the frame's
    origin in it, and how its 16-bit colours become 8 bits (a file that stored 8-bit values in the
    16-bit fields is kept as it is: the cloud's colour range decides, once, for every node)."""

    crs: str | None
    centre: tuple[float, float, float]
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    colour_shift: int

    @cached_property
    def _to_ecef(self) -> Any:
        from pyproj import CRS, Transformer

        return Transformer.from_crs(CRS.from_user_input(self.crs), ECEF, always_xy=True)

    @cached_property
    def origin(self) -> np.ndarray:
        """The local frame's origin: ECEF metres when placed, the cloud's coordinates when not."""
        if self.crs is None:
            return np.asarray(self.centre, float)
        return np.array(self._to_ecef.transform(*self.centre), float)

    @cached_property
    def axes(self) -> np.ndarray:
        """East, north and up at the origin (the columns), or the identity when unplaced."""
        if self.crs is None:
            return np.eye(3)
        from pyproj import CRS, Transformer

        to_wgs84 = Transformer.from_crs(CRS.from_user_input(self.crs), 4326, always_xy=True)
        lon, lat = (math.radians(v) for v in to_wgs84.transform(*self.centre[:2]))
        east = [-math.sin(lon), math.cos(lon), 0.0]
        north = [-math.sin(lat) * math.cos(lon), -math.sin(lat) * math.sin(lon), math.cos(lat)]
        up = [math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)]
        return np.array([east, north, up]).T

    def local(self, points: np.ndarray) -> np.ndarray:
        """Canonical records → local frame coordinates (N × 3 float64)."""
        xyz = [points[a] * s + o for a, s, o in zip(("X", "Y", "Z"), self.scale, self.offset, strict=True)]
        if self.crs is not None:
            xyz = list(self._to_ecef.transform(*xyz))
        return (np.column_stack(xyz) - self.origin) @ self.axes

    def transform(self) -> list[float] | None:
        """The root tile's transform (column-major 4 × 4): local frame → ECEF; None when unplaced."""
        if self.crs is None:
            return None
        matrix = np.eye(4)
        matrix[:3, :3], matrix[:3, 3] = self.axes, self.origin
        return matrix.flatten("F").tolist()


@dataclass(frozen=True)
class NodeBox:
    depth: int
    key: int
    points: int
    low: tuple[float, float, float]
    high: tuple[float, float, float]


def tile_name(depth: int, key: int) -> str:
    return "{}-{}-{}-{}.pnts".format(depth, *unpack(key, depth))


def write_pnts(node: Node, placement: Placement, folder: Path) -> NodeBox:
    """The node's `.pnts` in `folder`; its box in the local frame."""
    from py3dtiles.points import Points
    from py3dtiles.tileset.content import Pnts

    xyz = placement.local(node.points)
    low, high = xyz.min(axis=0), xyz.max(axis=0)
    middle = (low + high) / 2
    colours = None
    if "red" in (node.points.dtype.names or ()):
        rgb = np.column_stack([node.points["red"], node.points["green"], node.points["blue"]])
        colours = np.ascontiguousarray((rgb >> placement.colour_shift).astype(np.uint8))
    extra: dict[str, np.ndarray] = {
        "Classification": np.ascontiguousarray(node.points["classification"]).astype(np.uint8),
        "Intensity": np.ascontiguousarray(node.points["intensity"]).astype(np.uint16),
    }
    pnts = Pnts.from_points(Points((xyz - middle).astype(np.float32), colours, extra))
    pnts.body.feature_table.header.rtc = (float(middle[0]), float(middle[1]), float(middle[2]))
    pnts.sync()
    pnts.save_as(folder / tile_name(node.depth, node.key))
    return NodeBox(node.depth, node.key, len(node.points), _triple(low), _triple(high))


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


class TilesetIndex:
    """The nodes' boxes, as they come; `write` makes `tileset.json` of them. A subtree whose JSON passes
    SPLIT_BYTES goes to an external tileset of its own (`tileset-<depth>-<x>-<y>-<z>.json`), which a
    viewer fetches when it gets there, as py3dtiles does: a 10⁹-point cloud has some 60,000 nodes."""

    def __init__(self, folder: Path, octree: Octree, placement: Placement) -> None:
        self.folder, self.octree, self.placement = folder, octree, placement
        self.boxes: dict[tuple[int, int], NodeBox] = {}
        self.external: list[str] = []

    def add(self, box: NodeBox) -> None:
        self.boxes[(box.depth, box.key)] = box

    def write(self) -> dict[str, Any]:
        if not self.boxes:
            raise ValueError("a tileset of no points")
        children: dict[tuple[int, int], set[tuple[int, int]]] = {}
        for node in self.boxes:  # (an ancestor without points of its own would still be in the tree)
            while node[0] > 0:
                x, y, z = unpack(node[1], node[0])
                parent = (node[0] - 1, pack(x >> 1, y >> 1, z >> 1, node[0] - 1))
                known = parent in children
                children.setdefault(parent, set()).add(node)
                if known:
                    break
                node = parent
        root, low, high = self._tile((0, 0), children)
        transform = self.placement.transform()
        if transform is not None:
            root["transform"] = transform
        error = float(np.linalg.norm(high - low))
        (self.folder / "tileset.json").write_text(json.dumps(_tileset(root, error), separators=(",", ":")))
        return {"files": len(self.boxes) + len(self.external) + 1, "tiles": len(self.boxes),
                "external_tilesets": len(self.external), "points": sum(b.points for b in self.boxes.values()),
                "bytes": sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file()),
                "geometric_error": error, "placed_on_globe": transform is not None, "asset_version": "1.0",
                "refine": "ADD"}  # fmt: skip

    def _tile(self, node: tuple[int, int], children: dict) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """The tile of `node` with its subtree, and the corners of its box, which holds its own points
        and its children's boxes. Its geometric error is ten times its cell size (py3dtiles' rule: a
        viewer refines once the gaps between its points would show); a leaf's is 0."""
        parts = [self._tile(child, children) for child in sorted(children.get(node, ()))]
        box = self.boxes.get(node)
        low = np.min([p[1] for p in parts] + ([box.low] if box else []), axis=0)
        high = np.max([p[2] for p in parts] + ([box.high] if box else []), axis=0)
        middle, half = (low + high) / 2, np.maximum((high - low) / 2, 1e-3)
        cell = 2 * self.octree.halfsize / GRID / 2 ** node[0]
        volume = {"box": [float(v) for v in (*middle, half[0], 0, 0, 0, half[1], 0, 0, 0, half[2])]}
        tile: dict[str, Any] = {"boundingVolume": volume, "geometricError": 10 * cell if parts else 0.0,
                                "refine": "ADD"}  # fmt: skip
        if box is not None:
            tile["content"] = {"uri": tile_name(*node)}
        if parts:
            tile["children"] = [p[0] for p in parts]
        if parts and node[0] > 0 and len(json.dumps(tile)) > SPLIT_BYTES:
            name = "tileset-{}-{}-{}-{}.json".format(node[0], *unpack(node[1], node[0]))
            (self.folder / name).write_text(
                json.dumps(_tileset(tile, tile["geometricError"]), separators=(",", ":"))
            )
            self.external.append(name)
            tile = {"boundingVolume": volume, "geometricError": tile["geometricError"], "refine": "ADD",
                    "content": {"uri": name}}  # fmt: skip
        return tile, low, high


def _tileset(root: dict[str, Any], error: float) -> dict[str, Any]:
    return {"asset": {"version": "1.0", "generator": "capture-daemon pointcloud (py3dtiles Pnts)"},
            "geometricError": error, "root": root}  # fmt: skip
