"""Noise with PDAL's semantics and ground with CSF, tile by tile: the statistical outlier test and the
extended local minimum give, tile by tile with halos, exactly the classes one pass over the whole cloud
gives; ELM matches a plain per-column reading of PDAL's rule; injected outliers are found with precision
and recall ≥ 0.95; the cloth finds ≥ 95% of ground right, tile by tile as over the whole."""

from __future__ import annotations

import laspy
import numpy as np

from daemon.handlers.pointcloud.classify import ground, ground_classes
from daemon.handlers.pointcloud.clean import (
    HIGH_NOISE,
    LOW_NOISE,
    extended_local_minimum,
    neighbour_distances,
    noise_classes,
    outlier_threshold,
    statistical_outliers,
)
from daemon.handlers.pointcloud.cleanwork import Distances
from daemon.handlers.pointcloud.octree import Octree
from daemon.handlers.pointcloud.params import CsfParams
from daemon.handlers.pointcloud.source import Frame
from daemon.handlers.pointcloud.tiling import Tiles, partition

FRAME = Frame((0.001, 0.001, 0.001), (500_000.0, 5_000_000.0, 0.0))


def _terrain(points: int, outliers: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 200 m square of gentle terrain (about 15 points/m²) with isolated points 15–60 m above it and
    5–20 m below it: coordinates and the true class (0, LOW_NOISE, HIGH_NOISE)."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 200, points), rng.uniform(0, 200, points)
    z = 100 + 3 * np.sin(x / 30) + 2 * np.cos(y / 25) + rng.normal(0, 0.02, points)
    truth = np.zeros(points, np.uint8)
    pick = rng.choice(points, outliers, replace=False)
    high = pick[: outliers // 2]
    low = pick[outliers // 2 :]
    z[high] += rng.uniform(15, 60, len(high))
    z[low] -= rng.uniform(5, 20, len(low))
    truth[high], truth[low] = HIGH_NOISE, LOW_NOISE
    return np.column_stack([x + 500_000, y + 5_000_000, z]), truth


def _tiles(xyz: np.ndarray, folder, halo: float, tile_points: int) -> Tiles:
    records = laspy.ScaleAwarePointRecord.zeros(
        len(xyz),
        point_format=laspy.PointFormat(6),
        scales=np.array(FRAME.scale),
        offsets=np.array(FRAME.offset),
    )
    records.x, records.y, records.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    records.gps_time = np.arange(len(xyz), dtype=np.float64)  # each point's index, to find it again
    octree = Octree.around(xyz.min(axis=0), xyz.max(axis=0), len(xyz), 0.001, tile_points)
    tiles = Tiles(folder, octree, halo, FRAME, laspy.PointFormat(6))
    chunks = (records[i : i + 7_000] for i in range(0, len(records), 7_000))
    partition(chunks, tiles)
    return tiles


def _xyz(records) -> np.ndarray:
    return np.column_stack([records.x, records.y, records.z])


def test_outliers_tile_by_tile_are_those_of_the_whole_cloud_and_the_injected_ones(tmp_path):
    xyz, truth = _terrain(60_000, 300)
    # the whole cloud at once (on the frame's millimetre grid, as the tiles store it)
    grid = np.round((xyz - FRAME.offset) / FRAME.scale) * FRAME.scale + FRAME.offset
    whole = neighbour_distances(grid, np.zeros((0, 3)), k=8)
    d = whole.mean_distance
    whole_noise = statistical_outliers(d, outlier_threshold(d.sum(), (d * d).sum(), len(d), 2.0))
    # tile by tile (16 tiles, a 5 m halo) as the clean stage works them: the distances, then the verdict
    tiles = _tiles(xyz, tmp_path / "tiles", halo=5.0, tile_points=4_000)
    assert tiles.octree.tile_depth == 2
    (tmp_path / "distances").mkdir()
    work, index, incomplete = Distances(tiles, tmp_path / "distances", 8), {}, 0
    tiled = np.zeros(len(xyz))
    for tile in tiles.ids():
        core, halo = _xyz(tiles.load(tile)), _xyz(tiles.load(tile, "halo"))
        # (isolated points near a border between tiles, whose neighbours lie past the halo)
        incomplete += int((~neighbour_distances(core, halo, 8, tiles.room(tile, core)).complete).sum())
        work(tile)
        index[tile] = np.asarray(tiles.load(tile).gps_time).astype(int)
        tiled[index[tile]] = np.load(tmp_path / "distances" / f"{tile}.npy")
    assert incomplete > 0 and np.allclose(tiled, whole.mean_distance, rtol=1e-9, atol=0)
    threshold = outlier_threshold(tiled.sum(), (tiled * tiled).sum(), len(tiled), 2.0)
    tiled_noise, classes = statistical_outliers(tiled, threshold), np.zeros(len(xyz), np.uint8)
    for tile in tiles.ids():
        noise = tiled_noise[index[tile]]
        core = _xyz(tiles.load(tile))
        everything = np.vstack([core, _xyz(tiles.load(tile, "halo"))])
        classes[index[tile][noise]] = noise_classes(core[noise], everything)
    assert np.array_equal(tiled_noise, whole_noise)
    # and the injected outliers are what it finds, high and low told apart
    for kind in (LOW_NOISE, HIGH_NOISE):
        hits = np.sum((classes == kind) & (truth == kind))
        assert hits / max(1, np.sum(classes == kind)) >= 0.95, "precision"
        assert hits / np.sum(truth == kind) >= 0.95, "recall"


def _elm_by_hand(xyz: np.ndarray, origin, cell: float, threshold: float) -> np.ndarray:
    """PDAL's filters.elm read plainly: column by column, up from the lowest point."""
    noise = np.zeros(len(xyz), bool)
    columns: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(xyz[:, :2]):
        columns.setdefault((int((x - origin[0]) // cell), int((y - origin[1]) // cell)), []).append(i)
    for members in columns.values():
        members.sort(key=lambda i: xyz[i, 2])
        for lower, upper in zip(members, members[1:], strict=False):
            if xyz[upper, 2] - xyz[lower, 2] > threshold:
                noise[lower] = True
            else:
                break
    return noise


def test_elm_follows_pdals_rule_and_tiles_agree_with_the_whole(tmp_path):
    xyz, truth = _terrain(20_000, 200, seed=3)
    # a column with two stacked low points: both noise
    xyz = np.vstack([xyz, [[500_050.5, 5_000_050.5, 80.0], [500_050.6, 5_000_050.4, 90.0]]])
    origin = (float(xyz[:, 0].min()), float(xyz[:, 1].min()))
    whole = extended_local_minimum(xyz, origin, cell=10.0, threshold=1.0)
    assert np.array_equal(whole, _elm_by_hand(xyz, origin, 10.0, 1.0))
    assert whole[-2:].all()
    low = truth == LOW_NOISE
    assert whole[: len(truth)][low].mean() >= 0.95  # the injected low points are found
    tiles = _tiles(xyz, tmp_path / "tiles", halo=10.0, tile_points=2_000)
    tiled = np.zeros(len(xyz), bool)
    for tile in tiles.ids():
        core, halo = tiles.load(tile), tiles.load(tile, "halo")
        both = np.vstack([_xyz(core), _xyz(halo)])
        tiled[np.asarray(core.gps_time).astype(int)] = extended_local_minimum(both, origin, 10.0, 1.0)[
            : len(core)
        ]
    assert np.array_equal(tiled, whole)


def _ground_truth_terrain(points: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Bare rolling terrain 200 m square with two buildings and a clump of trees: coordinates and
    whether each point is ground."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 200, points), rng.uniform(0, 200, points)
    z = 100 + 3 * np.sin(x / 30) + 2 * np.cos(y / 25) + rng.normal(0, 0.03, points)
    is_ground = np.ones(points, bool)
    for cx, cy, hx, hy, height in ((60, 60, 10, 15, 8.0), (120, 40, 8, 8, 12.0)):
        roof = (np.abs(x - cx) < hx) & (np.abs(y - cy) < hy)
        z[roof] += height
        is_ground[roof] = False
    trees = (np.hypot(x - 150, y - 140) < 12) & (rng.random(points) < 0.6)
    z[trees] += rng.uniform(2, 15, int(trees.sum()))
    is_ground[trees] = False
    return np.column_stack([x + 500_000, y + 5_000_000, z]), is_ground


def test_csf_finds_the_ground_tile_by_tile_as_over_the_whole(tmp_path):
    xyz, truth = _ground_truth_terrain(120_000)
    params = CsfParams()
    whole = ground(xyz, np.zeros((0, 3)), params)
    assert (whole == truth).mean() >= 0.95
    tiles = _tiles(xyz, tmp_path / "tiles", halo=20.0, tile_points=8_000)
    assert tiles.octree.tile_depth == 2
    tiled = np.zeros(len(xyz), bool)
    for tile in tiles.ids():
        core, halo = tiles.load(tile), tiles.load(tile, "halo")
        tiled[np.asarray(core.gps_time).astype(int)] = ground(_xyz(core), _xyz(halo), params)
    assert (tiled == truth).mean() >= 0.95
    assert (tiled == whole).mean() >= 0.99


def test_ground_classes_keep_noise_and_other_classes():
    before = np.array([1, 2, 6, 7, 2, 18], np.uint8)
    is_ground = np.array([True, False, False, True, True, True])
    noise = np.array([False, False, False, True, False, True])
    assert ground_classes(before, is_ground, noise).tolist() == [2, 1, 6, 7, 2, 18]
