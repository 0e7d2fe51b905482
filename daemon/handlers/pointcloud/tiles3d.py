"""`tiles/`: a 3D Tiles 1.0 tileset of the cloud, tile for node the COPC's octree (nodes.py), each node's
points in a `.pnts` (py3dtiles' `Pnts`, the format library of the replaced worker's tool).

- Refinement ADD, as COPC's levels are: a node's points are not repeated in its children, so a viewer
  draws the coarse sample first and adds detail where it looks. A node's geometric error is its cell
  size (its sample's spacing, the gap a viewer leaves by not loading its children); a leaf's is 0.
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
    """The nodes' boxes, as they come; `write` makes `tileset.json` of them."""

    def __init__(self, folder: Path, octree: Octree, placement: Placement) -> None:
        self.folder, self.octree, self.placement = folder, octree, placement
        self.boxes: dict[tuple[int, int], NodeBox] = {}

    def add(self, box: NodeBox) -> None:
        self.boxes[(box.depth, box.key)] = box

    def write(self) -> dict[str, Any]:
        if not self.boxes:
            raise ValueError("a tileset of no points")
        children: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for depth, key in sorted(self.boxes):
            if depth > 0:
                x, y, z = unpack(key, depth)
                parent = (depth - 1, pack(x >> 1, y >> 1, z >> 1, depth - 1))
                children.setdefault(parent, []).append((depth, key))
        root = self._tile((0, 0), children)
        transform = self.placement.transform()
        if transform is not None:
            root["transform"] = transform
        low, high = np.array(root["_low"]), np.array(root["_high"])
        _strip(root)
        tileset = {"asset": {"version": "1.0", "generator": "capture-daemon pointcloud (py3dtiles Pnts)"},
                   "geometricError": float(np.linalg.norm(high - low)), "root": root}  # fmt: skip
        (self.folder / "tileset.json").write_text(json.dumps(tileset, separators=(",", ":")))
        return {"files": len(self.boxes), "tiles": len(self.boxes),
                "points": sum(b.points for b in self.boxes.values()),
                "bytes": sum((self.folder / tile_name(d, k)).stat().st_size for d, k in self.boxes),
                "geometric_error": tileset["geometricError"], "placed_on_globe": transform is not None,
                "asset_version": "1.0", "refine": "ADD"}  # fmt: skip

    def _tile(self, node: tuple[int, int], children: dict) -> dict[str, Any]:
        """The tile of `node` and its subtree; its box holds its own points and its children's boxes
        (a node with no points of its own, which the octree never makes, would be a tile without
        content)."""
        kids = [self._tile(child, children) for child in children.get(node, [])]
        box = self.boxes.get(node)
        lows = [k["_low"] for k in kids] + ([box.low] if box else [])
        highs = [k["_high"] for k in kids] + ([box.high] if box else [])
        low, high = np.min(lows, axis=0), np.max(highs, axis=0)
        middle, half = (low + high) / 2, np.maximum((high - low) / 2, 1e-3)
        cell = 2 * self.octree.halfsize / GRID / 2 ** node[0]
        tile: dict[str, Any] = {
            "boundingVolume": {"box": [*middle, half[0], 0, 0, 0, half[1], 0, 0, 0, half[2]]},
            "geometricError": cell if kids else 0.0, "refine": "ADD", "_low": low, "_high": high}  # fmt: skip
        if box is not None:
            tile["content"] = {"uri": tile_name(*node)}
        if kids:
            tile["children"] = kids
        return tile


def _strip(tile: dict[str, Any]) -> None:
    tile.pop("_low"), tile.pop("_high")
    tile["boundingVolume"]["box"] = [float(v) for v in tile["boundingVolume"]["box"]]
    for child in tile.get("children", []):
        _strip(child)
