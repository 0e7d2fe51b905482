"""A real, public lidar file through the whole job (`tests/data/pointcloud/autzen_trim.laz`: Autzen
Stadium, Oregon; see the README there): LAS 1.2 in US feet with a coordinate system given only as an
ESRI-style WKT (no EPSG code), 8-bit colours in the 16-bit fields, ground classified by its provider.

- As it is: the analysis says what the file holds; the COPC keeps every point's integers; the tileset is
  placed on the globe from the WKT, over Eugene, and CesiumJS draws it there; the colours stay as they
  are (not divided by 256); the provider's ground is ours, what stands above it is not.
- With `srs_out` (UTM 10N) and `drop_noise`: the COPC holds the points the clean stage kept, each where
  pyproj puts it in UTM (feet to metres), within the new frame's millimetre.
"""

from __future__ import annotations

import json
from pathlib import Path

import laspy
import numpy as np
import pytest
from pyproj import CRS, Transformer
from scipy.spatial import cKDTree

from tests.fixtures_daemon import run_local
from tests.pointcloud.test_job_local import _env

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "pointcloud" / "autzen_trim.laz"
POINTS = 110_000
EUGENE = (-123.07, 44.05)  # lon, lat of the sample (by the stadium), to a kilometre


def _job(tmp_path_factory, file_server, name: str, params: dict) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp(name)
    url = file_server.add(f"{name}.laz", SAMPLE.read_bytes())
    spec = {
        "spec_version": 1,
        "job_id": name,
        "kind": "pointcloud",
        "inputs": [{"url": url}],
        "params": params,
    }
    ended, logs = run_local(_env(folder), spec, "--out", str(folder / "out"))
    assert ended["status"] == "completed", logs[-3000:]
    return folder / "out" / name, ended["result"]


def _order(points) -> np.ndarray:
    """The points in one order whatever order they are stored in: by their integers, then attributes."""
    return np.lexsort([np.asarray(points[name]) for name in ("gps_time", "intensity", "Z", "Y", "X")])


@pytest.fixture(scope="module")
def as_it_is(tmp_path_factory, file_server) -> tuple[Path, dict]:
    return _job(tmp_path_factory, file_server, "pc-autzen", {})


def test_the_analysis_and_the_copc_keep_what_the_file_holds(as_it_is):
    out, manifest = as_it_is
    analysis = manifest["analysis"]
    assert (analysis["points"], analysis["las_version"], analysis["point_format"]) == (POINTS, "1.2", 3)
    assert analysis["srs"]["epsg"] is None and "Lambert" in analysis["srs"]["name"]
    low, high = analysis["srs"]["wgs84_bounds"]["min"], analysis["srs"]["wgs84_bounds"]["max"]
    assert low[0] < EUGENE[0] + 0.01 and high[0] > EUGENE[0] - 0.01 and abs(low[1] - EUGENE[1]) < 0.02
    source = laspy.read(SAMPLE)
    copc = laspy.CopcReader.open(str(out / "cloud.copc.laz"))
    points = copc.query()
    assert len(points) == POINTS and np.allclose(copc.header.scales, source.header.scales)
    with laspy.open(out / "cloud.copc.laz") as plain:  # the file's WKT carried into the COPC
        assert "Lambert" in plain.header.parse_crs().name
    order_in, order_out = _order(source.points), _order(points)
    for name in ("X", "Y", "Z", "intensity", "red"):
        assert np.array_equal(np.asarray(source[name])[order_in], np.asarray(points[name])[order_out]), name
    # The provider's ground, found again by the cloth. Their other points are not all off the ground (half
    # lie within 0.2 ft of their ground surface: a sparse ground model), so what is checked is that their
    # ground is ours, and that what stands clearly above it (2 ft) is not ground for us (noise aside).
    xyz = np.column_stack([source.x, source.y, source.z])[order_in]
    theirs = np.asarray(source.classification)[order_in] == 2
    ours = np.asarray(points.classification)[order_out]
    kept = ~np.isin(ours, (7, 18))
    _, nearest = cKDTree(xyz[theirs, :2]).query(xyz[:, :2], k=8)
    above = xyz[:, 2] - np.median(xyz[theirs, 2][nearest], axis=1) > 2.0
    recall = float((ours == 2)[theirs & kept].mean())
    standing = float((ours != 2)[above & ~theirs & kept].mean())
    assert recall >= 0.85 and standing >= 0.93, (recall, standing)


def test_the_tileset_is_placed_from_the_wkt_and_drawn_there(as_it_is):
    from tests.pointcloud.test_viewer_harness import open_in_viewers

    out, manifest = as_it_is
    tiles = manifest["outputs"]["tiles"]
    assert tiles["placed_on_globe"] is True and tiles["points"] == POINTS
    tileset = json.loads((out / "tiles" / "tileset.json").read_text())
    origin = np.array(tileset["root"]["transform"])[12:15]
    lon, lat, _ = Transformer.from_crs(4978, 4979, always_xy=True).transform(*origin)
    assert abs(lon - EUGENE[0]) < 0.01 and abs(lat - EUGENE[1]) < 0.01
    # the colours as the file stored them (8-bit values: not divided by 256, which would make them black)
    from tests.pointcloud.test_tilework import _pnts

    reds = [_pnts(path)["rgb"][:, 0].max() for path in (out / "tiles").glob("*.pnts")]
    assert max(reds) == laspy.read(SAMPLE).red.max() > 200
    cesium = open_in_viewers("autzen", tileset=out / "tiles")["cesium"]
    assert cesium["ok"] is True and cesium["console_errors"] == [] and cesium["tiles_failed"] == 0, cesium
    assert abs(cesium["center"]["longitude"] - EUGENE[0]) < 0.01, cesium
    assert abs(cesium["center"]["latitude"] - EUGENE[1]) < 0.01, cesium


def test_reprojected_with_noise_left_out(tmp_path_factory, file_server, as_it_is):
    out, manifest = _job(
        tmp_path_factory, file_server, "pc-autzen-utm", {"srs_out": 32610, "drop_noise": True}
    )
    noise = manifest["clean"]["low_noise"] + manifest["clean"]["high_noise"]
    assert noise > 0  # (the sample has a few isolated returns)
    copc = laspy.CopcReader.open(str(out / "cloud.copc.laz"))
    points = copc.query()
    assert len(points) == POINTS - noise and not np.isin(np.asarray(points.classification), (7, 18)).any()
    with laspy.open(out / "cloud.copc.laz") as plain:
        assert plain.header.parse_crs().to_epsg() == 32610
    source = laspy.read(SAMPLE)
    to_utm = Transformer.from_crs(CRS.from_wkt(source.header.parse_crs().to_wkt()), 32610, always_xy=True)
    expected = np.column_stack(to_utm.transform(source.x, source.y, source.z))
    got = np.column_stack([points.x, points.y, points.z])
    centre = expected.mean(axis=0)
    distance, _ = cKDTree(expected - centre).query(got - centre)
    # each kept point where pyproj puts it, within half the new frame's step on each axis
    assert distance.max() <= np.linalg.norm(copc.header.scales) / 2 + 1e-9
    assert manifest["outputs"]["tiles"]["points"] == len(points)
