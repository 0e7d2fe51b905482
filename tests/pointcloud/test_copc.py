"""cloud.copc.laz read back by laspy's CopcReader: every point present exactly once across the hierarchy,
a bounding-box query returns exactly the points inside it, each node an even sample at its spacing,
the header and coordinate system as the source's; the same whether the cloud is one tile or sixteen."""

from __future__ import annotations

from pathlib import Path

import laspy
import numpy as np
import pytest
from pyproj import CRS

from daemon.handlers.pointcloud.copc import write_copc
from daemon.handlers.pointcloud.octree import GRID, Octree
from daemon.handlers.pointcloud.source import open_cloud, read_chunks
from daemon.handlers.pointcloud.stats import Tally


def _survey(path: Path, points: int, seed: int = 0) -> Path:
    """Rolling terrain 400 m × 300 m in UTM 33N with RGB, as a LAZ (1 mm scale, a real-world offset)."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 400, points), rng.uniform(0, 300, points)
    header = laspy.LasHeader(point_format=7, version="1.4")
    header.scales, header.offsets = np.array([0.001] * 3), np.array([500_000.0, 5_000_000.0, 0.0])
    header.add_crs(CRS.from_epsg(32633))
    las = laspy.LasData(header)
    las.x, las.y = x + 500_000, y + 5_000_000
    las.z = 200 + 8 * np.sin(x / 60) + 5 * np.cos(y / 45) + rng.normal(0, 0.03, points)
    las.red, las.green = (x * 160).astype(np.uint16), (y * 210).astype(np.uint16)
    las.blue = np.full(points, 20_000, np.uint16)
    las.gps_time = np.arange(points, dtype=np.float64)
    las.write(path)
    return path


def _write(source: Path, out: Path, tile_points: int) -> tuple[laspy.ScaleAwarePointRecord, Octree, dict]:
    cloud = open_cloud(source, max_points=10**9)
    tally, chunks = Tally(), []
    for chunk in read_chunks(cloud, chunk_points=50_000):
        tally.add(chunk)
        chunks.append(chunk)
    records = laspy.ScaleAwarePointRecord(
        np.concatenate([c.array for c in chunks]), cloud.record_format, np.array(cloud.frame.scale),
        np.array(cloud.frame.offset),
    )  # fmt: skip
    octree = Octree.around(tally.mins, tally.maxs, tally.points, max(cloud.frame.scale), tile_points)
    tiles = octree.tiles(np.column_stack([records.x, records.y]))
    summary = write_copc(
        out, (records[tiles == t] for t in np.unique(tiles)), octree=octree, frame=cloud.frame,
        point_format=cloud.record_format, bounds=(tally.mins, tally.maxs), wkt=cloud.srs_wkt,
        spill=out.parent / "spill",
    )  # fmt: skip
    return records, octree, summary


@pytest.mark.parametrize("tile_points", [10**9, 20_000], ids=["one tile", "sixteen tiles"])
def test_every_point_once_and_box_queries_exact(tmp_path, tile_points):
    source = _survey(tmp_path / "survey.laz", 300_000)
    records, octree, summary = _write(source, tmp_path / "cloud.copc.laz", tile_points)
    assert octree.tile_depth == (0 if tile_points > 10**6 else 2)
    reader = laspy.CopcReader.open(str(tmp_path / "cloud.copc.laz"))
    # The header: every point, the source's frame, bounds and coordinate system
    assert reader.header.point_count == len(records) == summary["points"]
    assert np.allclose(reader.header.scales, 0.001)
    assert np.allclose(reader.header.offsets, [500_000, 5_000_000, 0])
    with laspy.open(tmp_path / "cloud.copc.laz") as plain:  # copclib writes the WKT as an extended VLR
        assert plain.header.parse_crs().to_epsg() == 32633
    # Every point exactly once, with its exact integer coordinates and attributes
    everything = reader.query()
    order_in, order_out = np.argsort(records.gps_time), np.argsort(everything.gps_time)
    for name in ("X", "Y", "Z", "red", "green", "blue", "gps_time"):
        written, read = np.asarray(records[name])[order_in], np.asarray(everything[name])[order_out]
        assert np.array_equal(written, read), name
    # A box query returns exactly the points inside the box
    low = np.array([500_100.0, 5_000_050.0, 190.0])
    high = np.array([500_230.5, 5_000_160.25, 207.0])
    found = reader.query(bounds=laspy.copc.Bounds(low, high))
    xyz = np.column_stack([records.x, records.y, records.z])
    inside = np.all((xyz >= low) & (xyz <= high), axis=1)
    assert 1000 < len(found) == int(inside.sum())
    assert np.array_equal(np.sort(found.gps_time), np.sort(np.asarray(records.gps_time)[inside]))


def test_each_level_is_an_even_sample_at_its_spacing(tmp_path):
    source = _survey(tmp_path / "survey.laz", 300_000, seed=1)
    _, octree, summary = _write(source, tmp_path / "cloud.copc.laz", 20_000)
    reader = laspy.CopcReader.open(str(tmp_path / "cloud.copc.laz"))
    assert summary["nodes"] > 1 and reader.copc_info.spacing == pytest.approx(octree.spacing)
    root = reader.query(level=0)
    # at most one root point per root cell (the root's spacing), and the root covers the whole survey
    cells = octree.cells(np.column_stack([root.x, root.y, root.z]), 0)
    assert len(np.unique(cells, axis=0)) == len(root)
    assert np.ptp(root.x) > 390 and np.ptp(root.y) > 290
    # each deeper level is finer: more points, none beyond the leaves' depth
    counts = [len(reader.query(level=d)) for d in range(int(max(summary["nodes_per_depth"], key=int)) + 1)]
    assert counts[0] < counts[1] and sum(counts) == 300_000
    assert GRID == 128
