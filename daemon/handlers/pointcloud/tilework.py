"""Work done tile by tile, spread over the cores: a pool of worker processes each taking a tile at a time,
the results handed back in tile order (so the outputs are the same whatever the number of workers).

The pool's processes come from a fork server (a fresh interpreter, started without the job's threads):
a child forked from the job's process itself would inherit lazrs' rayon pool and OpenMP's threads
without their threads, and hang in its first parallel call (rayon-rs/rayon#708). An interrupt (a spot
notice, a cancel) drops the tiles not started and waits for those in hand (a tile's time); a worker
that dies fails the stage instead of leaving it waiting for a tile that will never come.

`TileWork` is the tile stage's share: a tile's finished points (its final classes, noise left out with
`drop_noise`) placed in the octree's nodes, each node compressed for the COPC and written as a `.pnts`,
and the tile's top view drawn. The job's process writes the COPC and the tileset's index from what each
tile returns.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import laspy
import numpy as np

from .clean import is_noise
from .copc import CopcFile, compressed
from .nodes import Node, gathered, placed
from .preview import Drawn, Raster, TopView
from .tiles3d import NodeBox, Placement, TilesetIndex, write_pnts
from .tiling import Tiles

Result = TypeVar("Result")

PRELOAD = ["daemon.handlers.pointcloud.tilework"]
"""Imported once by the fork server, so each worker starts with numpy, laspy and copclib loaded."""


def workers() -> int:
    """The processes to work with: the cores this process may run on."""
    return len(os.sched_getaffinity(0))


def in_parallel(
    work: Callable[[int], Result], tiles: Iterable[int], processes: int, done: Callable[[Result], None]
) -> None:
    """`done(work(tile))` for every tile, in tile order; `work` runs in `processes` worker processes
    (`work` must pickle: a module-level function or a `functools.partial` of one), or here when one."""
    tiles = list(tiles)
    if processes <= 1 or len(tiles) <= 1:
        for tile in tiles:
            done(work(tile))
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    pool = ProcessPoolExecutor(min(processes, len(tiles)), mp_context=context)
    try:
        for result in pool.map(work, tiles):
            done(result)
    except BrokenProcessPool as exc:  # a worker died (killed, out of memory): never wait for its tile
        raise RuntimeError(f"a worker process placing tiles died: {exc}") from exc
    finally:
        # on an interrupt, the tiles not started are dropped and the ones in hand finish (a tile's time)
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class TileWork:
    """The tile stage's work on one tile (a picklable description of it; called with the tile)."""

    tiles: Tiles
    classes: Path | None
    """The folder of each tile's final classes (`<tile>.npy`); None: the records' own."""
    drop_noise: bool
    spill: Path
    pnts: Path | None
    """Where the `.pnts` go; None: no tileset."""
    placement: Placement | None
    raster: Raster | None
    """The preview's grid; None: no preview."""
    colour_shift: int

    def __call__(self, tile: int) -> TileResult:
        records = self.finished(tile)
        result = TileResult(drawn=self._drawn(records) if self.raster is not None else None)
        for node in placed(tile, records, self.tiles.octree, self.spill):
            result.add(*self.node(node))
        return result

    def finished(self, tile: int) -> laspy.ScaleAwarePointRecord:
        """The tile's points with their final classes, noise left out with `drop_noise`."""
        records = self.tiles.load(tile)
        if self.classes is not None:
            records.classification = np.load(self.classes / f"{tile}.npy")
        return records[~is_noise(np.asarray(records.classification))] if self.drop_noise else records

    def node(self, node: Node) -> tuple[Node, bytes, NodeBox | None]:
        """The node compressed for the COPC, and its `.pnts` written."""
        chunk = compressed(node, self.tiles.point_format.id)
        box = write_pnts(node, self.placement, self.pnts) if self.pnts and self.placement else None
        return node, chunk, box

    def _drawn(self, records: laspy.ScaleAwarePointRecord) -> Drawn:
        """The tile's top view (noise not drawn: a bird would stand on a roof)."""
        assert self.raster is not None
        keep = ~is_noise(np.asarray(records.classification))
        xyz = np.column_stack([records.x, records.y, records.z])[keep]
        rgb = None
        if "red" in records.point_format.dimension_names:
            rgb16 = np.column_stack([records.red, records.green, records.blue])[keep]
            rgb = (rgb16 >> self.colour_shift).astype(np.uint8)
        return self.raster.highest(xyz, rgb)


@dataclass
class TileResult:
    drawn: Drawn | None
    nodes: list[tuple[int, int, bytes, int]] = field(default_factory=list)
    """(depth, key, compressed chunk, points) of each complete node."""
    boxes: list[NodeBox] = field(default_factory=list)

    def add(self, node: Node, chunk: bytes, box: NodeBox | None) -> None:
        self.nodes.append((node.depth, node.key, chunk, len(node.points)))
        if box is not None:
            self.boxes.append(box)

    @property
    def points(self) -> int:
        return sum(count for _, _, _, count in self.nodes)

    def save(self, path: Path) -> None:
        """To `path` (.npz: plain arrays, no pickle), for an attempt that resumes the stage."""
        chunks = [np.frombuffer(chunk, np.uint8) for _, _, chunk, _ in self.nodes]
        boxes = [(b.depth, b.key, b.points, *b.low, *b.high) for b in self.boxes]
        arrays: dict[str, np.ndarray] = {
            "nodes": np.array([(d, k, n) for d, k, _, n in self.nodes], np.int64).reshape(-1, 3),
            "ends": np.cumsum([len(c) for c in chunks], dtype=np.int64),
            "chunks": np.concatenate(chunks) if chunks else np.zeros(0, np.uint8),
            "boxes": np.array(boxes, float).reshape(-1, 9),
        }
        if self.drawn is not None:
            arrays |= {"pixels": self.drawn.pixels, "z": self.drawn.z}
            if self.drawn.rgb is not None:
                arrays["rgb"] = self.drawn.rgb
        with path.open("wb") as out:
            np.savez(out, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> TileResult:
        with np.load(path) as saved:
            drawn = None
            if "pixels" in saved.files:
                rgb = saved["rgb"] if "rgb" in saved.files else None
                drawn = Drawn(saved["pixels"], saved["z"], rgb)
            result = cls(drawn)
            starts = np.r_[0, saved["ends"][:-1]] if len(saved["ends"]) else []
            for (depth, key, count), start, end in zip(saved["nodes"], starts, saved["ends"], strict=True):
                result.nodes.append((int(depth), int(key), saved["chunks"][start:end].tobytes(), int(count)))
            for row in saved["boxes"]:
                low, high = tuple(map(float, row[3:6])), tuple(map(float, row[6:9]))
                result.boxes.append(NodeBox(int(row[0]), int(row[1]), int(row[2]), low, high))  # type: ignore[arg-type]
        return result


class Assembly:
    """The outputs being put together in the job's process from what each tile's work returns: the COPC's
    nodes, the tileset's boxes, the top view."""

    def __init__(self, copc: CopcFile, index: TilesetIndex, view: TopView) -> None:
        self.copc, self.index, self.view = copc, index, view

    def add(self, result: TileResult) -> None:
        for depth, key, chunk, count in result.nodes:
            self.copc.add_compressed(depth, key, chunk, count)
        for box in result.boxes:
            self.index.add(box)
        if result.drawn is not None:
            self.view.merge(result.drawn)

    def finish(self, work: TileWork) -> None:
        """The nodes above the tiles' depth, gathered from every tile's share."""
        for node in gathered(work.spill, work.tiles.point_format.dtype()):
            _, chunk, box = work.node(node)
            self.copc.add_compressed(node.depth, node.key, chunk, len(node.points))
            if box is not None:
                self.index.add(box)


def place_all(
    work: TileWork, processes: int, copc: CopcFile, index: TilesetIndex, view: TopView,
    progress: Callable[[float], None],
) -> None:  # fmt: skip
    """Every tile's work, in `processes` processes, put together here in tile order (`Assembly`)."""
    ids, finished, assembly = work.tiles.ids(), [0], Assembly(copc, index, view)

    def done(result: TileResult) -> None:
        assembly.add(result)
        finished[0] += 1
        progress(finished[0] / len(ids))

    in_parallel(work, ids, processes, done)
    assembly.finish(work)
