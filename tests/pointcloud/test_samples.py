"""The generated surveys (daemon/samples/clouds.py) and their files (cloud_files.py): the truth is what
it claims, chunks are the survey, and every file reads back through the real reader (laspy, pye57,
numpy) as written; each broken file is broken the way its maker says."""

from __future__ import annotations

import struct
from pathlib import Path

import laspy
import lazrs
import numpy as np
import pye57
import pyproj
import pytest
from scipy.spatial import cKDTree

from daemon.samples import cloud_files, clouds
from daemon.samples.clouds import BUILDING, GROUND, HIGH_NOISE, HIGH_VEGETATION, LOW_NOISE, Cloud

COLUMNS = ("x", "y", "z", "intensity", "return_number", "number_of_returns", "classification", "gps_time")
COLOURS = ("red", "green", "blue")
HALF_MM = 0.0005 + 1e-9  # a coordinate written at 0.001 m comes back within half of it


@pytest.fixture(scope="module")
def cloud() -> Cloud:
    return clouds.survey(100_000, seed=1)


def share(cloud: Cloud, kind: int) -> float:
    return float(np.mean(cloud.classification == kind))


def assert_same(a: Cloud, b: Cloud) -> None:
    for name in COLUMNS + COLOURS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


# The survey and its truth


@pytest.mark.parametrize("chunk", [7_777, clouds.BLOCK, 40_000])
def test_chunks_concatenate_to_the_survey_whatever_their_size(chunk):
    whole = clouds.survey(60_000, seed=3)
    chunks = list(clouds.survey_chunks(60_000, chunk, seed=3))
    assert [len(c) for c in chunks[:-1]] == [chunk] * (len(chunks) - 1) and 0 < len(chunks[-1]) <= chunk
    assert_same(Cloud.concatenate(chunks), whole)


def test_a_seed_gives_the_same_survey_and_another_seed_another():
    assert_same(clouds.survey(5_000, seed=7), clouds.survey(5_000, seed=7))
    assert not np.array_equal(clouds.survey(5_000, seed=7).z, clouds.survey(5_000, seed=8).z)


def test_the_survey_lies_in_utm_33n_at_a_realistic_density():
    survey = clouds.survey(600_000)
    extent = clouds.default_extent(600_000)
    assert survey.epsg == 32633 and len(survey) == 600_000
    assert survey.x.dtype == survey.z.dtype == survey.gps_time.dtype == np.float64
    assert survey.x.min() >= 500_000 and survey.x.max() <= 500_000 + extent
    assert survey.y.min() >= 5_000_000 and survey.y.max() <= 5_000_000 + extent
    assert 20 <= len(survey) / extent**2 <= 50


def test_the_truth_has_every_class_in_sensible_shares(cloud):
    assert set(np.unique(cloud.classification)) == {GROUND, HIGH_VEGETATION, BUILDING, LOW_NOISE, HIGH_NOISE}
    assert share(cloud, GROUND) > 0.6
    assert 0.02 < share(cloud, BUILDING) < 0.2 and 0.02 < share(cloud, HIGH_VEGETATION) < 0.3
    assert share(cloud, HIGH_NOISE) + share(cloud, LOW_NOISE) == pytest.approx(0.002, rel=0.25)
    assert share(cloud, HIGH_NOISE) == pytest.approx(share(cloud, LOW_NOISE), rel=0.4)


def test_the_outlier_share_follows_the_parameter():
    noisy = clouds.survey(50_000, seed=2, outliers=0.05)
    assert share(noisy, HIGH_NOISE) + share(noisy, LOW_NOISE) == pytest.approx(0.05, rel=0.1)
    quiet = clouds.survey(50_000, seed=2, outliers=0.0)
    assert share(quiet, HIGH_NOISE) + share(quiet, LOW_NOISE) == 0


def test_noise_is_isolated_and_far_above_or_below_the_ground(cloud):
    ground = cloud.select(cloud.classification == GROUND)
    tree = cKDTree(np.c_[ground.x, ground.y])
    for kind, low, high in ((HIGH_NOISE, 19.5, 100), (LOW_NOISE, -20.5, -2.5)):
        noise = cloud.select(cloud.classification == kind)
        _, nearest = tree.query(np.c_[noise.x, noise.y])
        height = noise.z - ground.z[nearest]
        assert np.all((low < height) & (height < high)), kind
    everything = cKDTree(np.c_[cloud.x, cloud.y, cloud.z])
    noisy = np.isin(cloud.classification, [HIGH_NOISE, LOW_NOISE])
    distance, _ = everything.query(np.c_[cloud.x, cloud.y, cloud.z][noisy], k=2)
    assert np.median(distance[:, 1]) > 2.0  # ground points lie ~0.8 m apart


def test_returns_are_consistent_and_trees_have_several(cloud):
    assert np.all((cloud.return_number >= 1) & (cloud.return_number <= cloud.number_of_returns))
    assert np.all(np.diff(cloud.gps_time) >= 0)
    in_trees = cloud.classification == HIGH_VEGETATION
    assert np.mean(cloud.number_of_returns[in_trees] > 1) > 0.7
    assert np.all(
        cloud.number_of_returns[np.isin(cloud.classification, [BUILDING, HIGH_NOISE, LOW_NOISE])] == 1
    )
    under = (cloud.classification == GROUND) & (cloud.return_number > 1)
    assert under.any() and np.all(cloud.return_number[under] == cloud.number_of_returns[under])
    later = np.flatnonzero(cloud.return_number > 1)
    assert np.array_equal(cloud.gps_time[later], cloud.gps_time[later - 1])  # one pulse, one time


def test_colours_tell_ground_roofs_and_crowns_apart(cloud):
    def mean_rgb(kind: int) -> np.ndarray:
        return np.array([getattr(cloud, c)[cloud.classification == kind].mean() for c in COLOURS]) / 257

    red, green, blue = mean_rgb(HIGH_VEGETATION)
    assert green > red and green > blue and green < 110  # dark green
    assert mean_rgb(BUILDING)[0] > mean_rgb(BUILDING)[1]  # red tiles and grey concrete
    assert clouds.survey(1_000, colour=False).red is None


def test_bare_ground_is_terrain_of_a_few_metres_relief_only():
    terrain = clouds.bare_ground(50_000, seed=4)
    assert np.all(terrain.classification == GROUND) and np.all(terrain.number_of_returns == 1)
    assert 0.5 < np.ptp(terrain.z) < 12


def test_an_empty_survey_is_an_empty_cloud():
    assert len(clouds.survey(0)) == 0 and list(clouds.survey_chunks(0)) == []


# The writers, read back by the real readers


@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_las_reads_back_with_its_crs_within_the_scale(cloud, tmp_path, suffix):
    path = cloud_files.write_las(cloud, tmp_path / f"survey{suffix}")
    las = laspy.read(path)
    assert las.header.are_points_compressed == (suffix == ".laz")
    assert las.header.version == laspy.header.Version(1, 4) and las.header.point_format.id == 7
    assert las.header.parse_crs().to_epsg() == 32633
    for axis in "xyz":
        assert np.max(np.abs(np.asarray(las[axis]) - getattr(cloud, axis))) <= HALF_MM
    for name in ("intensity", "return_number", "number_of_returns", "gps_time", *COLOURS):
        assert np.array_equal(np.asarray(las[name]), getattr(cloud, name)), name
    assert np.all(np.asarray(las.classification) == 1)  # a survey arrives unclassified


def test_las_carries_the_truth_when_asked_and_drops_colour_without_it(tmp_path):
    plain = clouds.survey(5_000, colour=False)
    las = laspy.read(cloud_files.write_las(plain, tmp_path / "truth.las", truth=True))
    assert las.header.point_format.id == 6
    assert np.array_equal(np.asarray(las.classification), plain.classification)


def test_las_streams_chunks_into_the_same_points(tmp_path):
    chunked = cloud_files.write_las(clouds.survey_chunks(30_000, 4_000), tmp_path / "chunked.laz", truth=True)
    whole = cloud_files.write_las(clouds.survey(30_000), tmp_path / "whole.laz", truth=True)
    a, b = laspy.read(chunked), laspy.read(whole)
    assert a.header.point_count == 30_000
    for name in ("x", "y", "z", "gps_time", "classification", "red"):
        assert np.allclose(np.asarray(a[name]), np.asarray(b[name]), rtol=0, atol=HALF_MM), name


def ply_rows(path: Path) -> tuple[list[str], np.ndarray]:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    types = {"double": "<f8", "uchar": "u1", "ushort": "<u2"}
    dtype = np.dtype(
        [(line.split()[2], types[line.split()[1]]) for line in header if line.startswith("property")]
    )
    if "format binary_little_endian 1.0" in header:
        return header, np.frombuffer(data[end:], dtype)
    table = np.loadtxt(path, skiprows=len(header))
    return header, np.rec.fromarrays(table.T, dtype=dtype)


@pytest.mark.parametrize("binary", [True, False])
def test_ply_reads_back(tmp_path, binary):
    small = clouds.survey(3_000, seed=5)
    header, rows = ply_rows(cloud_files.write_ply(small, tmp_path / "survey.ply", binary=binary))
    assert f"element vertex {len(small)}" in header and len(rows) == len(small)
    for axis in "xyz":
        assert np.max(np.abs(rows[axis] - getattr(small, axis))) <= (0 if binary else HALF_MM)
    assert np.array_equal(rows["red"], small.red >> 8) and np.array_equal(rows["intensity"], small.intensity)


@pytest.mark.parametrize(
    ("name", "delimiter"), [("survey.csv", ","), ("survey.xyz", " "), ("survey.txt", " ")]
)
def test_text_reads_back(tmp_path, name, delimiter):
    small = clouds.survey(2_000, seed=6)
    path = cloud_files.write_xyz(small, tmp_path / name)
    assert path.read_text().splitlines()[0] == delimiter.join(["x", "y", "z", "intensity", *COLOURS])
    table = np.loadtxt(path, delimiter=delimiter, skiprows=1)
    assert np.max(np.abs(table[:, :3] - np.c_[small.x, small.y, small.z])) <= HALF_MM
    assert np.array_equal(
        table[:, 3:], np.c_[small.intensity, small.red >> 8, small.green >> 8, small.blue >> 8]
    )


def test_e57_reads_back_through_its_pose(tmp_path):
    small = clouds.survey(5_000, seed=7)
    e57 = pye57.E57(str(cloud_files.write_e57(small, tmp_path / "survey.e57")))
    assert e57.scan_count == 1
    scan = e57.read_scan(0, intensity=True, colors=True)
    for axis, name in zip("xyz", ("cartesianX", "cartesianY", "cartesianZ"), strict=True):
        assert np.max(np.abs(scan[name] - getattr(small, axis))) <= HALF_MM
    assert np.array_equal(scan["intensity"], small.intensity) and np.array_equal(
        scan["colorRed"], small.red >> 8
    )
    assert np.abs(e57.read_scan_raw(0)["cartesianX"]).max() < 1_000  # stored local, placed by the pose


# The broken files


def header(path: Path) -> laspy.LasHeader:
    with laspy.open(path) as reader:
        return reader.header


def test_a_truncated_laz_opens_and_fails_on_its_points(tmp_path):
    path = cloud_files.truncated_laz(tmp_path / "cut.laz")
    assert header(path).point_count == 500 and path.stat().st_size < 10_000
    with pytest.raises(lazrs.LazrsError):
        laspy.read(path)


def test_a_lying_count_promises_more_points_than_it_has(tmp_path):
    path = cloud_files.lying_count_las(tmp_path / "lying.las")
    with laspy.open(path) as reader:
        assert reader.header.point_count == 200
        assert len(reader.read_points(-1)) == 100


def test_zero_points_is_a_sound_file_without_points(tmp_path):
    path = cloud_files.zero_points_las(tmp_path / "zero.las")
    assert header(path).point_count == 0 and header(path).parse_crs().to_epsg() == 32633
    assert len(laspy.read(path).points) == 0


def test_identical_points_are_a_thousand_copies_of_one(tmp_path):
    las = laspy.read(cloud_files.identical_points_las(tmp_path / "same.las"))
    assert len(las.points) == 1000 and len(np.unique(np.c_[las.X, las.Y, las.Z], axis=0)) == 1


def test_nan_xyz_has_nan_and_inf_where_it_says(tmp_path):
    table = np.loadtxt(cloud_files.nan_xyz(tmp_path / "nan.csv"), delimiter=",", skiprows=1)
    assert np.isnan(table[10, 0]) and table[20, 1] == np.inf and table[30, 2] == -np.inf
    assert np.isnan(table[40, :3]).all()
    assert np.isfinite(np.delete(table, [10, 20, 30, 40], axis=0)).all()


def test_an_absurd_scale_collapses_the_points_and_an_absurd_offset_overflows(tmp_path):
    las = laspy.read(cloud_files.absurd_scale_las(tmp_path / "scale.las"))
    assert np.all(las.header.scales == 1e-12) and np.ptp(np.asarray(las.x)) < 1e-5
    las = laspy.read(cloud_files.absurd_scale_las(tmp_path / "offset.las", field="offset"))
    assert np.all(las.header.offsets == 1e300)
    with np.errstate(over="ignore"):
        assert np.isinf(np.asarray(las.x) ** 2).all()


def test_the_bomb_is_small_and_claims_a_trillion_points(tmp_path):
    path = cloud_files.bomb_laz(tmp_path / "bomb.laz")
    assert path.stat().st_size < 10_000 and header(path).point_count == 10**12
    assert struct.unpack_from("<I", path.read_bytes(), cloud_files.LEGACY_POINT_COUNT) == (0,)
    with laspy.open(path) as reader:  # its first points are sound; only the count lies
        assert len(reader.read_points(100)) == 100


@pytest.mark.parametrize("kind", ["wkt", "epsg"])
def test_an_unknown_srs_does_not_parse(tmp_path, kind):
    path = cloud_files.unknown_srs_las(tmp_path / "nowhere.las", kind=kind)
    with pytest.raises(pyproj.exceptions.CRSError):
        header(path).parse_crs()
    assert len(laspy.read(path).points) == 100


def test_an_empty_e57_has_no_scans(tmp_path):
    assert pye57.E57(str(cloud_files.empty_e57(tmp_path / "empty.e57"))).scan_count == 0


def test_not_a_cloud_is_a_png_or_prose(tmp_path):
    png = cloud_files.not_a_cloud(tmp_path / "photo.las")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(laspy.LaspyException):
        laspy.read(png)
    assert cloud_files.not_a_cloud(tmp_path / "notes.xyz", kind="text").read_text().startswith("These")


def test_every_broken_file_is_a_few_kilobytes(tmp_path):
    makers = [
        cloud_files.truncated_laz, cloud_files.lying_count_las, cloud_files.zero_points_las,
        cloud_files.identical_points_las, cloud_files.nan_xyz, cloud_files.absurd_scale_las,
        cloud_files.bomb_laz, cloud_files.unknown_srs_las, cloud_files.empty_e57, cloud_files.not_a_cloud,
    ]  # fmt: skip
    sizes = {maker.__name__: maker(tmp_path / maker.__name__).stat().st_size for maker in makers}
    assert max(sizes.values()) < 40_000, sizes
