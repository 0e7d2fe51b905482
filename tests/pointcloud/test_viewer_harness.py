"""The point cloud viewer harness (tests/pointcloud/viewers/open.mjs) reads what a real client reads: a
small COPC file (copclib, a root node and four children) opens in copc.js + three.js and a small 3D Tiles
tileset (py3dtiles from a UTM LAS, to ECEF) opens in CesiumJS, in headless Debian Chromium, served
through request routing with HTTP range requests for the COPC; each page reads all the data, reports no
error and no refused request, and draws a picture that is neither blank nor flooded. A truncated COPC, a
tileset naming a missing tile and one naming a tile on another host each fail, and the harness says how.

Screenshots are kept in test-artifacts/pointcloud-viewers/ (or $TEST_ARTIFACTS_DIR/pointcloud-viewers/).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures_daemon import ROOT

pytestmark = pytest.mark.slow

OPEN = ROOT / "tests" / "pointcloud" / "viewers" / "open.mjs"
UTM33N = 32633
CENTER = np.array([500_050.0, 5_000_050.0, 50.0])  # the COPC cube's centre, EPSG:32633 metres
HALF = 50.0  # the cube's half size
ROOT_POINTS, CHILD_POINTS = 4000, 1000  # the root node's points, each depth-1 node's
LAS_POINTS = 6000
OFFSET = (500_000.0, 5_000_000.0, 0.0)  # the LAS and COPC files' offset (scale 0.01 m)


def artifacts() -> Path:
    folder = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "test-artifacts") / "pointcloud-viewers"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def point_record(rng: np.random.Generator, n: int, low: np.ndarray, high: np.ndarray):
    """n points of format 7 spread over the box low-high, red along x and green along y."""
    import laspy

    points = laspy.ScaleAwarePointRecord.zeros(
        n, point_format=laspy.PointFormat(7), scales=np.array([0.01] * 3), offsets=np.array(OFFSET)
    )
    xyz = rng.uniform(low, high, size=(n, 3))
    points.x, points.y, points.z = xyz.T
    share = (xyz - (CENTER - HALF)) / (2 * HALF)
    points.red = (share[:, 0] * 65535).astype(np.uint16)
    points.green = (share[:, 1] * 65535).astype(np.uint16)
    points.blue = np.full(n, 20000, np.uint16)
    return points


def write_copc(path: Path) -> None:
    """A COPC 1.0 file: the root node and the four upper depth-1 nodes, each with points inside its cube."""
    import copclib
    import laspy
    import pyproj

    rng = np.random.default_rng(0)
    scale, offset = copclib.Vector3(0.01, 0.01, 0.01), copclib.Vector3(*OFFSET)
    config = copclib.CopcConfigWriter(7, scale, offset, pyproj.CRS.from_epsg(UTM33N).to_wkt())
    low, high = CENTER - HALF, CENTER + HALF - 0.01
    config.las_header.min, config.las_header.max = copclib.Vector3(*low), copclib.Vector3(*high)
    config.copc_info.center_x, config.copc_info.center_y, config.copc_info.center_z = CENTER
    config.copc_info.halfsize, config.copc_info.spacing = HALF, 2 * HALF / 128
    writer = copclib.FileWriter(str(path), config)
    nodes = {(0, 0, 0, 0): (ROOT_POINTS, low, high)}
    for x in (0, 1):
        for y in (0, 1):
            corner = low + np.array([x, y, 1]) * HALF
            nodes[(1, x, y, 1)] = (CHILD_POINTS, corner, corner + HALF - 0.01)
    for key, (n, node_low, node_high) in nodes.items():
        points = point_record(rng, n, node_low, node_high)
        writer.AddNode(copclib.VoxelKey(*key), copclib.VectorChar(points.array.view(np.int8).reshape(-1)))
    writer.Close()
    with laspy.CopcReader.open(path) as reader:  # the input is what the test says it is
        assert len(reader.query()) == reader.header.point_count == ROOT_POINTS + 4 * CHILD_POINTS


def write_tileset(folder: Path, work: Path) -> None:
    """A 3D Tiles tileset of LAS_POINTS points, made by py3dtiles convert from a UTM LAS, in ECEF."""
    import laspy
    import pyproj

    header = laspy.LasHeader(point_format=7, version="1.4")
    header.scales, header.offsets = np.array([0.01] * 3), np.array(OFFSET)
    header.add_crs(pyproj.CRS.from_epsg(UTM33N))
    las = laspy.LasData(header)
    las.points = point_record(np.random.default_rng(1), LAS_POINTS, CENTER - HALF, CENTER + [HALF, HALF, -30])
    las.write(work / "in.las")
    # py3dtiles' workers can outlive it: it runs in a session of its own, killed whole when it is done
    command = ["timeout", "-s", "KILL", "120", str(Path(sys.executable).parent / "py3dtiles"), "convert",
               str(work / "in.las"), "--out", str(folder), "--jobs", "1", "--srs_out", "4978"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=work, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = process.communicate(timeout=130)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, f"py3dtiles convert: {process.returncode}\n{output.decode()[-3000:]}"
    assert (folder / "tileset.json").is_file()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pointcloud-viewers")
    write_copc(base / "cloud.copc.laz")
    write_tileset(base / "tiles", base)
    return {"copc": base / "cloud.copc.laz", "tileset": base / "tiles", "base": base}


def open_in_viewers(name: str, copc: Path | None = None, tileset: Path | None = None) -> dict[str, dict]:
    args = {"copc": copc and str(copc), "tileset": tileset and str(tileset), "out": str(artifacts()),
            "size": 480, "name": name, "timeout_s": 30}  # fmt: skip
    done = subprocess.run(["node", str(OPEN), json.dumps(args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return {result["viewer"]: result for result in json.loads(done.stdout.strip().splitlines()[-1])}


def drawn_share(png: Path) -> float:
    """The share of the picture that is not the page's white background."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return float((np.abs(pixels - 255).sum(axis=2) > 30).mean())


def tiles_with_content(tileset: dict) -> list[dict]:
    """The tileset's tiles that have content, coarsest first."""
    found, level = [], [tileset["root"]]
    while level:
        found += [tile for tile in level if "content" in tile]
        level = [child for tile in level for child in tile.get("children", [])]
    return found


def test_the_copc_and_the_tileset_open_and_draw_in_copc_js_and_cesium(inputs):
    import pyproj

    # Given a COPC file and a 3D Tiles tileset, opened in both viewers
    results = open_in_viewers("harness", copc=inputs["copc"], tileset=inputs["tileset"])
    assert set(results) == {"copc", "cesium"}, results
    for viewer, result in results.items():
        # Then each page loaded with no error and asked for nothing but its own files
        where = f"{viewer}: {result}"
        assert result["ok"] is True and result["error"] is None, where
        assert result["console_errors"] == [] and result["refused"] == [], where
        # And it drew the cloud: neither a blank canvas nor a flooded one
        share = drawn_share(Path(result["screenshot"]))
        print(f"{viewer}: {share:.1%} of the picture drawn ({result['screenshot']})")
        assert 0.02 < share < 0.9, f"{where}: {share:.1%} drawn"
    # And copc.js read the header, the whole hierarchy and every point, by range requests
    copc = results["copc"]
    total = ROOT_POINTS + 4 * CHILD_POINTS
    assert copc["nodes"] == copc["nodes_read"] == 5 and copc["max_depth"] == 1, copc
    assert copc["points_expected"] == copc["points_loaded"] == copc["points_drawn"] == total, copc
    assert copc["rgb"] is True and copc["has_wkt"] is True and copc["range_requests"] >= 1 + 1 + 5, copc
    # And CesiumJS drew every point of the tileset, where the UTM coordinates say it is on the globe
    cesium = results["cesium"]
    assert cesium["tiles_failed"] == 0 and cesium["tiles_loaded"] >= 1, cesium
    assert cesium["points_drawn"] == LAS_POINTS, cesium
    lon, lat = pyproj.Transformer.from_crs(UTM33N, 4326, always_xy=True).transform(*CENTER[:2])
    center = cesium["center"]
    assert abs(center["longitude"] - lon) < 1e-3 and abs(center["latitude"] - lat) < 1e-3, cesium


def test_broken_outputs_fail_in_the_viewers_and_the_harness_says_why(inputs):
    base = inputs["base"]
    # Given a COPC cut short (its last nodes and its hierarchy are past the end of the file)
    data = inputs["copc"].read_bytes()
    truncated = base / "truncated.copc.laz"
    truncated.write_bytes(data[: len(data) // 2])
    # And a tileset whose coarsest tile with content is missing, and one whose tile is on another host
    tileset = json.loads((inputs["tileset"] / "tileset.json").read_text())
    missing, elsewhere = base / "missing-tile", base / "tile-elsewhere"
    for folder, uri in ((missing, "points/not-there.pnts"), (elsewhere, "https://tiles.example.com/r.pnts")):
        folder.mkdir()
        for pnts in (inputs["tileset"] / "points").glob("*.pnts"):
            (folder / "points").mkdir(exist_ok=True)
            (folder / "points" / pnts.name).write_bytes(pnts.read_bytes())
        broken = json.loads(json.dumps(tileset))
        tiles_with_content(broken)[0]["content"]["uri"] = uri
        (folder / "tileset.json").write_text(json.dumps(broken))

    # When they are opened
    results = open_in_viewers("broken", copc=truncated, tileset=missing)
    elsewhere_result = open_in_viewers("elsewhere", tileset=elsewhere)["cesium"]

    # Then copc.js fails on the range past the end of the file, which the harness lists
    copc = results["copc"]
    assert copc["ok"] is False and "HTTP 416" in copc["error"], copc
    past_the_end = "http://viewer.invalid/cloud.copc.laz (416: bytes="
    assert any(entry.startswith(past_the_end) for entry in copc["refused"]), copc
    # And CesiumJS reports the missing tile, which the harness lists as not found
    cesium = results["cesium"]
    assert cesium["ok"] is False and cesium["tiles_failed"] >= 1, cesium
    assert "not-there.pnts" in cesium["error"], cesium
    assert "http://viewer.invalid/tiles/points/not-there.pnts (404)" in cesium["refused"], cesium
    # And a tile on another host is never fetched: the request is refused, the tile fails
    assert elsewhere_result["ok"] is False and elsewhere_result["tiles_failed"] >= 1, elsewhere_result
    assert elsewhere_result["refused"] == ["https://tiles.example.com/r.pnts"], elsewhere_result
