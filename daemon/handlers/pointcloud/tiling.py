"""The cloud cut into the octree's XY tiles on disk, each with a halo: the points of its neighbours within
`halo` metres of its edges. A neighbourhood filter run on a tile and its halo sees every neighbour a
point of the tile has (k nearest neighbours closer than the halo, an ELM column no wider than it), so
tile by tile gives the answer one pass over the whole cloud would, in one tile's memory.

    <folder>/core/<tile>.bin    the tile's own points (canonical records, appended chunk by chunk)
    <folder>/halo/<tile>.bin    its neighbours' points within the halo
    <folder>/halo/<tile>.src    where each halo point lives: its tile and index there (int64 pairs), so
                                what a stage decided for that point can be looked up

Raw records, not LAZ: each is written once and read once or twice, and the disk is the instance's
local NVMe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np

from .octree import Octree
from .source import Frame


@dataclass(frozen=True)
class Tiles:
    folder: Path
    octree: Octree
    halo: float
    frame: Frame
    point_format: laspy.PointFormat

    @property
    def side(self) -> int:
        return 1 << self.octree.tile_depth

    @property
    def tile_size(self) -> float:
        return 2 * self.octree.halfsize / self.side

    def ids(self) -> list[int]:
        """The tiles that have points, in order."""
        return sorted(int(p.stem) for p in (self.folder / "core").glob("*.bin"))

    def load(self, tile: int, part: str = "core") -> laspy.ScaleAwarePointRecord:
        """The tile's own points ("core") or its halo ("halo"; empty when it has none)."""
        path = self.folder / part / f"{tile}.bin"
        dtype = self.point_format.dtype()
        return self.records(np.fromfile(path, dtype) if path.exists() else np.zeros(0, dtype))

    def records(self, array: np.ndarray) -> laspy.ScaleAwarePointRecord:
        scales, offsets = np.array(self.frame.scale), np.array(self.frame.offset)
        return laspy.ScaleAwarePointRecord(array, self.point_format, scales, offsets)

    def halo_sources(self, tile: int) -> np.ndarray:
        """(tile, index) of each of the tile's halo points in its own tile (N × 2)."""
        path = self.folder / "halo" / f"{tile}.src"
        return np.fromfile(path, np.int64).reshape(-1, 2) if path.exists() else np.zeros((0, 2), np.int64)

    def looked_up(self, tile: int, per_tile: Callable[[int], np.ndarray]) -> np.ndarray:
        """A value per halo point of `tile`, taken from `per_tile(its tile)[its index]`."""
        sources = self.halo_sources(tile)
        values: np.ndarray | None = None
        for source in np.unique(sources[:, 0]):
            rows = sources[:, 0] == source
            found = per_tile(int(source))[sources[rows, 1]]
            if values is None:
                values = np.zeros(len(sources), found.dtype)
            values[rows] = found
        return values if values is not None else np.zeros(0)

    def gather(self, low: np.ndarray, high: np.ndarray, besides: int | None = None) -> np.ndarray:
        """Every point (N × 3 coordinates) of the cloud inside the XY rectangle `low`–`high`, from the
        tiles it overlaps (tile `besides` left out): for the rare neighbourhood that reaches past a halo."""
        side, size = self.side, self.tile_size
        corner = np.asarray(self.octree.center[:2]) - self.octree.halfsize
        first = np.clip(np.floor((low - corner) / size).astype(int), 0, side - 1)
        last = np.clip(np.floor((high - corner) / size).astype(int), 0, side - 1)
        found = [np.zeros((0, 3))]
        for column in range(first[0], last[0] + 1):
            for row in range(first[1], last[1] + 1):
                if column * side + row == besides:
                    continue
                records = self.load(column * side + row)
                xyz = np.column_stack([records.x, records.y, records.z])
                inside = np.all((xyz[:, :2] >= low) & (xyz[:, :2] <= high), axis=1)
                found.append(xyz[inside])
        return np.concatenate(found)

    def room(self, tile: int, xyz: np.ndarray) -> np.ndarray:
        """Each of the tile's points' distance to the edge of what it sees with the halo: its tile's edge
        plus the halo, on each side where the grid goes on (none on a side where it ends: no point of
        the cloud lies past it)."""
        column, row = divmod(tile, self.side)
        x0, y0 = self.origin(tile)
        size, last, endless = self.tile_size, self.side - 1, np.full(len(xyz), np.inf)
        sides = [(xyz[:, 0] - x0, column > 0), (x0 + size - xyz[:, 0], column < last),
                 (xyz[:, 1] - y0, row > 0), (y0 + size - xyz[:, 1], row < last)]  # fmt: skip
        return np.minimum.reduce([d if goes_on else endless for d, goes_on in sides]) + self.halo

    def origin(self, tile: int) -> tuple[float, float]:
        """The tile's lower-left corner."""
        low = np.asarray(self.octree.center) - self.octree.halfsize
        return float(low[0] + (tile // self.side) * self.tile_size), float(
            low[1] + (tile % self.side) * self.tile_size
        )


def partition(chunks: Iterable[laspy.ScaleAwarePointRecord], tiles: Tiles) -> dict[int, int]:
    """Write every chunk's points into their tiles and their neighbours' halos; points per tile."""
    for part in ("core", "halo"):
        (tiles.folder / part).mkdir(parents=True, exist_ok=True)
    counts: dict[int, int] = {}
    for chunk in chunks:
        xy = np.column_stack([chunk.x, chunk.y])
        tile = tiles.octree.tiles(xy)
        position = np.zeros(len(tile), np.int64)  # each point's index in its own tile's file
        for index, members in _by_tile(tile):
            _append(tiles.folder / "core" / f"{index}.bin", chunk.array[members])
            position[members] = counts.get(index, 0) + np.arange(len(members))
            counts[index] = counts.get(index, 0) + len(members)
        for index, members in _halo_members(xy, tile, tiles):
            _append(tiles.folder / "halo" / f"{index}.bin", chunk.array[members])
            _append(
                tiles.folder / "halo" / f"{index}.src", np.column_stack([tile[members], position[members]])
            )
    return counts


def _halo_members(xy: np.ndarray, tile: np.ndarray, tiles: Tiles) -> Iterator[tuple[int, np.ndarray]]:
    """(neighbour tile, the points it takes into its halo) for the points of one chunk."""
    side, size = tiles.side, tiles.tile_size
    low = np.asarray(tiles.octree.center[:2]) - tiles.octree.halfsize
    column, row = tile // side, tile % side
    within = (xy - low) - np.column_stack([column, row]) * size  # position inside the own tile
    near = {-1: within < tiles.halo, 1: within > size - tiles.halo}
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx == dy == 0:
                continue
            mask = np.ones(len(xy), bool)
            if dx:
                mask &= near[dx][:, 0] & (column + dx >= 0) & (column + dx < side)
            if dy:
                mask &= near[dy][:, 1] & (row + dy >= 0) & (row + dy < side)
            if mask.any():
                yield from _by_tile((column + dx) * side + (row + dy), np.flatnonzero(mask))


def _by_tile(tile: np.ndarray, subset: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(tile, indices of its points) for each tile present; `subset` restricts to those indices."""
    index = np.arange(len(tile)) if subset is None else subset
    keys = tile[index]
    order = np.argsort(keys, kind="stable")
    keys, index = keys[order], index[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(keys)], strict=True):
        yield int(keys[start]), index[start:end]


def _append(path: Path, array: np.ndarray) -> None:
    with path.open("ab") as out:
        out.write(np.ascontiguousarray(array).tobytes())
