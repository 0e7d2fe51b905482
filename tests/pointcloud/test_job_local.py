"""The pointcloud kind's stages end to end in `run-local` (a real download from a loopback file server,
laspy, copclib, CSF and py3dtiles): a generated survey with known truth comes out as a COPC whose every
point is the survey's, noise found with precision and recall ≥ 0.95, ground ≥ 0.95 right, a 3D Tiles
tileset holding every point, a preview that is not blank; a bad upload is refused with its own code."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import laspy
import numpy as np
import pytest
from PIL import Image

from daemon.samples import cloud_files, clouds
from tests.fixtures_daemon import run_local

NOISE = (clouds.LOW_NOISE, clouds.HIGH_NOISE)


@pytest.fixture(scope="module")
def survey_job(tmp_path_factory, file_server) -> tuple[clouds.Cloud, Path, dict]:
    """A 72,000-point survey of a 60 m square (20 points/m², a drone's density) with 0.5% noise,
    classes unset in the file, through the whole job."""
    folder = tmp_path_factory.mktemp("survey-job")
    truth = clouds.survey(72_000, seed=7, outliers=0.005, extent_m=60)
    upload = cloud_files.write_las(truth, folder / "survey.laz")
    url = file_server.add("pointcloud-survey.laz", upload.read_bytes())
    spec = {"spec_version": 1, "job_id": "pc-local-1", "kind": "pointcloud", "inputs": [{"url": url}]}
    ended, logs = run_local(_env(folder), spec, "--out", str(folder / "out"))
    assert ended["status"] == "completed", logs[-3000:]
    return truth, folder / "out" / "pc-local-1", ended["result"]


def _env(folder: Path) -> dict[str, str]:
    import os

    return {**{k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "S3_", "SENTRY_"))},
            "DAEMON_ENV_FILE": str(folder / "no.env"), "DAEMON_WORK_DIR": str(folder / "work"),
            "DAEMON_STATE_DIR": str(folder / "state"), "REDIS_URL": "redis://127.0.0.1:1/0",
            "URL_ALLOW_NETWORKS": "127.0.0.1/32", "IMDS_URL": ""}  # fmt: skip


def _truth_by_point(truth: clouds.Cloud, points) -> np.ndarray:
    """The true class of each point read back, found by its coordinates on the file's millimetre grid."""
    mine = _grid_keys(truth.x, truth.y, truth.z)
    order = np.argsort(mine)
    found = np.searchsorted(mine[order], _grid_keys(points.x, points.y, points.z))
    return truth.classification[order[np.clip(found, 0, len(order) - 1)]]


def _grid_keys(x, y, z) -> np.ndarray:
    """One int64 per point from its millimetre coordinates (x, y within 10 km; z's last 10 m: enough to
    tell the survey's points apart)."""
    mm = [np.round(np.asarray(v, float) * 1000).astype(np.int64) for v in (x, y, z)]
    return (mm[0] % 10**7) * 10**11 + (mm[1] % 10**7) * 10**4 + mm[2] % 10**4


def test_the_copc_holds_every_point_with_noise_and_ground_found(survey_job):
    truth, out, manifest = survey_job
    reader = laspy.CopcReader.open(str(out / "cloud.copc.laz"))
    points = reader.query()
    assert len(points) == len(truth) == manifest["analysis"]["points"]
    true_class = _truth_by_point(truth, points)
    found = np.asarray(points.classification)
    for kind in NOISE:  # noise: precision and recall ≥ 0.95, high and low told apart
        hits = np.sum((found == kind) & (true_class == kind))
        assert hits / max(1, np.sum(found == kind)) >= 0.95, (kind, "precision")
        assert hits / max(1, np.sum(true_class == kind)) >= 0.95, (kind, "recall")
    not_noise = ~np.isin(true_class, NOISE)
    assert ((found == 2) == (true_class == 2))[not_noise].mean() >= 0.95  # ground right
    # the analysis and the outputs' summaries say what the files hold
    assert manifest["analysis"]["srs"]["epsg"] == 32633
    assert manifest["outputs"]["copc"]["points"] == len(truth)


def test_the_tileset_holds_every_point_and_every_tile_is_reachable(survey_job):
    truth, out, _ = survey_job
    tileset = json.loads((out / "tiles" / "tileset.json").read_text())
    reached, points = _walk(tileset["root"], out / "tiles", "REPLACE")
    named = {*(out / "tiles").rglob("*.pnts"), *(out / "tiles").glob("tileset-*.json")}
    assert reached == named  # every tile file named, none left over
    assert points == len(truth)


def _walk(tile: dict, folder: Path, refine: str) -> tuple[set[Path], int]:
    """Every content file the tileset names, and the points a viewer shows at full detail: a tile's
    own (POINTS_LENGTH of its .pnts) unless its children replace them (refine "REPLACE")."""
    refine = tile.get("refine", refine)
    children = tile.get("children", [])
    reached, points = set(), 0
    uri = (tile.get("content") or {}).get("uri")
    if uri and uri.endswith(".json"):  # an external tileset: its root stands for this tile
        more, count = _walk(json.loads((folder / uri).read_text())["root"], folder, refine)
        return more | {folder / uri}, count
    if uri:
        path = folder / uri
        reached.add(path)
        data = path.read_bytes()
        assert data[:4] == b"pnts", path
        length = struct.unpack_from("<I", data, 12)[0]
        if refine == "ADD" or not children:
            points += json.loads(data[28 : 28 + length])["POINTS_LENGTH"]
    for child in children:
        more, count = _walk(child, folder, refine)
        reached |= more
        points += count
    return reached, points


def test_the_preview_shows_the_survey(survey_job):
    truth, out, manifest = survey_job
    picture = np.asarray(Image.open(out / "preview.png"))
    assert picture.shape[2] == 4 and max(picture.shape[:2]) == 1024
    drawn = picture[..., 3] > 0
    assert picture[drawn][:, :3].std() > 10  # not one flat colour
    # and filled where the flight went: as many of its pixels drawn as hold a point of the survey
    preview, low = manifest["outputs"]["preview"], np.array(manifest["analysis"]["bounds"]["min"][:2])
    cell = preview["pixel_m"]
    raster = np.floor((np.column_stack([truth.x, truth.y]) - low) / cell).astype(int)
    shape = np.ceil((np.array(manifest["analysis"]["bounds"]["max"][:2]) - low) / cell).astype(int)
    covered = len(np.unique(raster, axis=0)) / np.prod(np.maximum(shape, 1))
    assert drawn.mean() == pytest.approx(covered, abs=0.05)
    assert preview["coloured_by"] == "rgb"


BAD = {
    "not_a_point_cloud": lambda p: cloud_files.not_a_cloud(p / "photo.png"),
    "truncated_cloud": lambda p: cloud_files.truncated_laz(p / "cut.laz"),
    "point_count_mismatch": lambda p: cloud_files.lying_count_las(p / "lying.las"),
    "empty_cloud": lambda p: cloud_files.zero_points_las(p / "none.las"),
    "degenerate_cloud": lambda p: cloud_files.identical_points_las(p / "same.las"),
    "invalid_header": lambda p: cloud_files.absurd_scale_las(p / "scale.las"),
    "too_many_points": lambda p: cloud_files.bomb_laz(p / "bomb.laz"),
    "unknown_srs": lambda p: cloud_files.unknown_srs_las(p / "srs.las"),
}


@pytest.mark.parametrize("code", sorted(BAD))
def test_a_bad_upload_is_refused_with_its_own_code(code, tmp_path, file_server):
    upload = BAD[code](tmp_path)
    url = file_server.add(f"pointcloud-bad-{upload.name}", upload.read_bytes())
    spec = {"spec_version": 1, "job_id": f"pc-bad-{code.replace('_', '-')}", "kind": "pointcloud",
            "inputs": [{"url": url, "name": upload.name}]}  # fmt: skip
    ended, logs = run_local(_env(tmp_path), spec, "--out", str(tmp_path / "out"))
    assert ended["status"] == "failed", logs[-2000:]
    assert ended["error"]["code"] == code, ended["error"]


@pytest.mark.slow
def test_a_real_client_opens_the_outputs(survey_job):
    """copc.js reads the COPC by range requests and CesiumJS the tileset, in headless Chromium; both
    draw the survey where its coordinates say, with no error and no refused request."""
    import pyproj

    from tests.pointcloud.test_viewer_harness import drawn_share, open_in_viewers

    truth, out, manifest = survey_job
    results = open_in_viewers("survey-job", copc=out / "cloud.copc.laz", tileset=out / "tiles")
    assert set(results) == {"copc", "cesium"}
    for result in results.values():
        assert result["ok"] is True and result["console_errors"] == [] and result["refused"] == [], result
        assert 0.02 < drawn_share(Path(result["screenshot"])) < 0.95, result["screenshot"]
    copc = results["copc"]
    assert copc["nodes"] == copc["nodes_read"] == manifest["outputs"]["copc"]["nodes"], copc
    assert copc["points_loaded"] == copc["points_drawn"] == len(truth) and copc["has_wkt"], copc
    cesium = results["cesium"]
    assert cesium["tiles_failed"] == 0 and cesium["points_drawn"] > 0, cesium
    middle = (np.array(manifest["analysis"]["bounds"]["min"]) + manifest["analysis"]["bounds"]["max"]) / 2
    lon, lat = pyproj.Transformer.from_crs(32633, 4326, always_xy=True).transform(*middle[:2])
    assert abs(cesium["center"]["longitude"] - lon) < 1e-3 and abs(cesium["center"]["latitude"] - lat) < 1e-3
