"""The tile stage's outputs from many tiles: the same files whether the tiles are placed here or in two
worker processes; the tileset holds every point once, where its coordinates say (back from ECEF to UTM
within a millimetre), with its class and colour, each tile's box holding its points and its children's,
refined by ADD with a geometric error that shrinks with depth."""

from __future__ import annotations

import json
from pathlib import Path

import laspy
import numpy as np
import pytest
from pyproj import CRS, Transformer
from scipy.spatial import cKDTree

from daemon.handlers.pointcloud.copc import CopcFile
from daemon.handlers.pointcloud.octree import Octree
from daemon.handlers.pointcloud.preview import TopView
from daemon.handlers.pointcloud.source import Frame
from daemon.handlers.pointcloud.tiles3d import Placement, TilesetIndex
from daemon.handlers.pointcloud.tilework import Assembly, TileWork, place_all
from daemon.handlers.pointcloud.tiling import Tiles, partition

FRAME = Frame((0.001, 0.001, 0.001), (500_000.0, 5_000_000.0, 0.0))
POINTS = 60_000


def _cloud() -> laspy.ScaleAwarePointRecord:
    """Rolling terrain 300 m × 200 m in UTM 33N with 16-bit colour and a class per point."""
    rng = np.random.default_rng(5)
    records = laspy.ScaleAwarePointRecord.zeros(
        POINTS,
        point_format=laspy.PointFormat(7),
        scales=np.array(FRAME.scale),
        offsets=np.array(FRAME.offset),
    )
    x, y = rng.uniform(0, 300, POINTS), rng.uniform(0, 200, POINTS)
    records.x, records.y = x + 500_000, y + 5_000_000
    records.z = 150 + 6 * np.sin(x / 40) + 4 * np.cos(y / 30) + rng.normal(0, 0.05, POINTS)
    records.red, records.green = (x * 200).astype(np.uint16), (y * 300).astype(np.uint16)
    records.blue = np.full(POINTS, 30_000, np.uint16)
    records.classification = rng.choice([1, 2, 5], POINTS).astype(np.uint8)
    records.intensity = rng.integers(0, 4000, POINTS).astype(np.uint16)
    return records


def setup(records: laspy.ScaleAwarePointRecord, folder: Path) -> tuple[TileWork, Assembly]:
    """The tile stage's work over `records` cut in many tiles under `folder`, and its outputs begun."""
    xyz = np.column_stack([records.x, records.y, records.z])
    octree = Octree.around(xyz.min(axis=0), xyz.max(axis=0), len(xyz), 0.001, tile_points=3_000)
    tiles = Tiles(folder / "tiles-in", octree, 0.0, FRAME, laspy.PointFormat(7))
    partition((records[i : i + 9_000] for i in range(0, len(records), 9_000)), tiles)
    utm = CRS.from_epsg(32633).to_wkt()
    placement = Placement(utm, octree.center, FRAME.scale, FRAME.offset, colour_shift=8)
    view = TopView.over(xyz.min(axis=0), xyz.max(axis=0), 256, 0.5)
    work = TileWork(tiles, None, False, folder / "spill", folder / "tiles", placement, view.raster, 8)
    work.pnts.mkdir(parents=True, exist_ok=True)
    copc = CopcFile(folder / "cloud.copc.laz", octree=octree, frame=FRAME, point_format=tiles.point_format,
                    bounds=(xyz.min(axis=0), xyz.max(axis=0)), wkt=None)  # fmt: skip
    return work, Assembly(copc, TilesetIndex(folder / "tiles", octree, placement), view)


def finish(assembly: Assembly, folder: Path) -> None:
    assembly.copc.close()
    assembly.index.write()
    assembly.view.save(folder / "preview.png", coloured=True)


def _outputs(records: laspy.ScaleAwarePointRecord, folder: Path, processes: int) -> Path:
    work, assembly = setup(records, folder)
    shares: list[float] = []
    place_all(work, processes, assembly.copc, assembly.index, assembly.view, shares.append)
    finish(assembly, folder)
    assert shares[-1] == 1.0 and len(shares) == len(work.tiles.ids())
    return folder


@pytest.fixture(scope="module")
def placed(tmp_path_factory) -> dict:
    records = _cloud()
    here = _outputs(records, tmp_path_factory.mktemp("one-process"), 1)
    pool = _outputs(records, tmp_path_factory.mktemp("two-processes"), 2)
    return {"records": records, "here": here, "pool": pool}


def test_two_worker_processes_make_the_same_files_as_one(placed):
    here, pool = placed["here"], placed["pool"]
    names = sorted(p.relative_to(here).as_posix() for p in here.rglob("*") if p.is_file() and "-in/" not in
                   p.relative_to(here).as_posix())  # fmt: skip
    assert len([n for n in names if n.endswith(".pnts")]) > 16  # many tiles, several levels
    for name in names:
        assert (here / name).read_bytes() == (pool / name).read_bytes(), name
    assert laspy.CopcReader.open(str(pool / "cloud.copc.laz")).header.point_count == POINTS


def _pnts(path: Path) -> dict[str, np.ndarray]:
    from py3dtiles.tileset.content import Pnts

    pnts = Pnts.from_file(path)
    table = pnts.body.feature_table
    local = table.body.position.reshape(-1, 3).astype(np.float64) + np.array(table.header.rtc)
    return {"local": local, "rgb": table.body.color.reshape(-1, 3),
            "class": pnts.body.batch_table.get_binary_property("Classification")}  # fmt: skip


def _walk(tile: dict, folder: Path, found: list, error: float) -> tuple[np.ndarray, np.ndarray]:
    """Every tile's content and its box's corners; each box holds its content and its children's boxes
    (an external tileset's root stands for the tile that names it, with the same box)."""
    uri = (tile.get("content") or {}).get("uri", "")
    if uri.endswith(".json"):
        external = json.loads((folder / uri).read_text())
        assert external["root"]["boundingVolume"] == tile["boundingVolume"] and "children" not in tile
        found.append({"external": uri})
        return _walk(external["root"], folder, found, error)
    box = np.array(tile["boundingVolume"]["box"])
    centre, half = box[:3], np.abs(box[3:].reshape(3, 3)).sum(axis=0)
    assert tile["refine"] == "ADD" and tile["geometricError"] <= error
    low, high = centre - half, centre + half
    if "content" in tile:
        points = _pnts(folder / tile["content"]["uri"])
        assert np.all(points["local"] >= low - 1e-3) and np.all(points["local"] <= high + 1e-3)
        found.append(points)
    for child in tile.get("children", []):
        child_low, child_high = _walk(child, folder, found, tile["geometricError"])
        assert np.all(child_low >= low - 1e-3) and np.all(child_high <= high + 1e-3)
    if not tile.get("children"):
        assert tile["geometricError"] == 0
    return low, high


def test_the_tileset_holds_every_point_where_it_is_with_its_class_and_colour(placed):
    records, folder = placed["records"], placed["here"]
    tileset = json.loads((folder / "tiles" / "tileset.json").read_text())
    found: list[dict] = []
    _walk(tileset["root"], folder / "tiles", found, tileset["geometricError"])
    found = [f for f in found if "local" in f]
    local = np.concatenate([f["local"] for f in found])
    assert len(local) == POINTS
    # back to UTM through the root's transform (local east-north-up → ECEF) and pyproj
    matrix = np.array(tileset["root"]["transform"]).reshape(4, 4, order="F")
    ecef = local @ matrix[:3, :3].T + matrix[:3, 3]
    utm = np.column_stack(Transformer.from_crs(4978, 32633, always_xy=True).transform(*ecef.T))
    source = np.column_stack([records.x, records.y, records.z])
    centre = source.mean(axis=0)
    distance, nearest = cKDTree(source - centre).query(utm - centre)
    assert distance.max() < 1e-3 and len(np.unique(nearest)) == POINTS  # each point once, within 1 mm
    classes = np.concatenate([f["class"] for f in found])
    assert np.array_equal(classes, np.asarray(records.classification)[nearest])
    rgb = np.concatenate([f["rgb"] for f in found])
    assert np.array_equal(rgb[:, 0], (np.asarray(records.red)[nearest] >> 8).astype(np.uint8))


def test_a_large_tree_is_split_into_external_tilesets_that_cesium_follows(placed, tmp_path, monkeypatch):
    from daemon.handlers.pointcloud import tiles3d
    from tests.pointcloud.test_viewer_harness import open_in_viewers

    # Given the same cloud, its subtrees over 2 KB of JSON written as external tilesets
    monkeypatch.setattr(tiles3d, "SPLIT_BYTES", 2_000)
    folder = _outputs(placed["records"], tmp_path / "split", 1)
    tileset = json.loads((folder / "tiles" / "tileset.json").read_text())
    found: list[dict] = []
    _walk(tileset["root"], folder / "tiles", found, tileset["geometricError"])
    # Then every point is reached through them, and every external tileset is named once
    externals = [f["external"] for f in found if "external" in f]
    assert len(externals) >= 2 and sorted(externals) == sorted(
        p.name for p in (folder / "tiles").glob("tileset-*.json")
    )
    assert sum(len(f["local"]) for f in found if "local" in f) == POINTS
    # And CesiumJS opens it through them, with no tile failing, and draws it where it belongs
    cesium = open_in_viewers("split-tileset", tileset=folder / "tiles")["cesium"]
    assert cesium["ok"] is True and cesium["console_errors"] == [] and cesium["tiles_failed"] == 0, cesium
    assert cesium["points_drawn"] > 0, cesium
    records = placed["records"]
    middle = (np.array([records.x.min(), records.y.min()]) + [records.x.max(), records.y.max()]) / 2
    lon, lat = Transformer.from_crs(32633, 4326, always_xy=True).transform(*middle)
    assert abs(cesium["center"]["longitude"] - lon) < 1e-3 and abs(cesium["center"]["latitude"] - lat) < 1e-3
