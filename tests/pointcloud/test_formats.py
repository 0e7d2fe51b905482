"""PLY, E57 and text tables through `open_cloud` and `read_chunks` (source.py, formats.py): every point
of a generated survey comes back in small chunks, on the frame chosen from the first points, with its
colours; files told apart by content; each broken upload refused with its own code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pye57
import pytest

from daemon.errors import InputError
from daemon.handlers.pointcloud.source import open_cloud, read_chunks
from daemon.handlers.pointcloud.stats import Tally
from daemon.samples import cloud_files, clouds

CHUNK = 3000
HALF_MM = 0.0005 + 1e-9
"""A coordinate on a millimetre frame comes back within half of it."""
E57_SLACK = 3e-5
"""write_e57 stores float32 coordinates a few hundred metres from the scan's pose: a few µm more."""


@pytest.fixture(scope="module")
def survey() -> clouds.Cloud:
    return clouds.survey(12_000, seed=4)


def read_all(path: Path, max_points: int = 10**9) -> tuple[object, dict[str, np.ndarray], int]:
    """The cloud, every point's coordinates and colours concatenated, and how many chunks came."""
    cloud = open_cloud(path, max_points)
    chunks = list(read_chunks(cloud, chunk_points=CHUNK))
    assert all(len(c) <= CHUNK for c in chunks)
    names = ["x", "y", "z", "intensity", *(["red", "green", "blue"] if cloud.colour else [])]
    return cloud, {n: np.concatenate([np.asarray(c[n]) for c in chunks]) for n in names}, len(chunks)


def assert_survey(points: dict[str, np.ndarray], survey: clouds.Cloud, slack: float = 0.0) -> None:
    assert len(points["x"]) == len(survey)
    for axis in "xyz":
        assert np.abs(points[axis] - getattr(survey, axis)).max() <= HALF_MM + slack, axis
    for channel in ("red", "green", "blue"):  # files carry 8 bits; LAS 16 (× 257)
        assert np.array_equal(points[channel], (getattr(survey, channel) >> 8).astype(np.uint16) * 257)


# Every format, every point


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
def test_a_ply_gives_every_point_and_colour(tmp_path, survey, binary):
    # Given a PLY of the survey as photogrammetry tools write one (double x, y, z, uchar colour)
    path = cloud_files.write_ply(survey, tmp_path / "cloud.bin", binary=binary)  # the name says nothing
    # When it is opened and read 3,000 points at a time
    cloud, points, chunks = read_all(path)
    # Then every point comes back on a millimetre frame from the kilometre below the survey
    assert (cloud.format, cloud.declared_points, cloud.colour) == ("ply", len(survey), True)
    assert cloud.srs_wkt is None
    assert cloud.frame.scale == (0.001,) * 3 and cloud.frame.offset == (500_000.0, 5_000_000.0, 0.0)
    assert chunks == 4
    assert_survey(points, survey)
    assert np.array_equal(points["intensity"], survey.intensity)  # ushort: as written
    assert cloud.extra["faces"] == 0


@pytest.mark.parametrize("delimiter", [",", ";", "\t", " "], ids=["comma", "semicolon", "tab", "space"])
def test_a_text_table_gives_every_point_and_colour(tmp_path, survey, delimiter):
    # Given the survey as a text table with a header line, in each delimiter
    path = cloud_files.write_xyz(survey, tmp_path / "cloud.txt", delimiter=delimiter)
    # When it is read, with the analysis tallying the chunks as the read stage does
    cloud = open_cloud(path, max_points=10**9)
    tally = Tally()
    for chunk in read_chunks(cloud, chunk_points=CHUNK):
        tally.add(chunk)
    tally.check(path.name)
    _, points, _ = read_all(path)
    # Then every point and colour is there; the count, declared nowhere, was estimated for progress
    assert cloud.format == "xyz" and tally.points == len(survey)
    assert cloud.declared_points == pytest.approx(len(survey), rel=0.05)
    assert_survey(points, survey)
    assert np.array_equal(points["intensity"], survey.intensity)


def test_cloudcompare_column_names_are_understood(tmp_path, survey):
    # Given a table as CloudCompare exports it: "//X;Y;Z;R;G;B", no intensity
    rgb = [(getattr(survey, c) >> 8) for c in ("red", "green", "blue")]
    rows = np.column_stack([survey.x, survey.y, survey.z, *rgb])
    path = tmp_path / "export.asc"
    np.savetxt(path, rows, fmt=["%.3f"] * 3 + ["%d"] * 3, delimiter=";", header="//X;Y;Z;R;G;B", comments="")
    # When it is read, then its points and 8-bit colours come back
    _, points, _ = read_all(path)
    assert_survey(points, survey)
    assert not points["intensity"].any()


def test_an_e57_gives_every_point_with_its_pose_applied(tmp_path, survey):
    # Given an E57 of one scan, stored relative to its pose as a terrestrial scanner does
    path = cloud_files.write_e57(survey, tmp_path / "scan.e57")
    # When it is read in chunks, then every point is back in the survey's coordinates
    cloud, points, chunks = read_all(path)
    assert (cloud.format, cloud.declared_points, cloud.colour, chunks) == ("e57", len(survey), True, 4)
    assert cloud.frame.offset == (500_000.0, 5_000_000.0, 0.0)
    assert_survey(points, survey, slack=E57_SLACK)


def test_e57_scans_are_posed_in_turn_and_invalid_points_dropped(tmp_path):
    # Given two scans of a 20 m block, each turned and moved by its own pose, with some points invalid
    rng = np.random.default_rng(2)
    poses = [(np.array([np.cos(0.4), 0, 0, np.sin(0.4)]), np.array([600_000.0, 5_100_000.0, 80.0])),
             (np.array([0.5, 0.5, 0.5, 0.5]), np.array([600_050.0, 5_100_020.0, 82.0]))]  # fmt: skip
    path = tmp_path / "two.e57"
    with pye57.E57(str(path), mode="w") as e57:
        for count, (rotation, translation) in zip((5000, 4000), poses, strict=True):
            local = rng.uniform(-10, 10, (count, 3))
            invalid = (rng.random(count) < 0.1).astype(np.int8) * 2
            scan = {"cartesianX": local[:, 0], "cartesianY": local[:, 1], "cartesianZ": local[:, 2],
                    "cartesianInvalidState": invalid}  # fmt: skip
            e57.write_scan_raw(scan, rotation=rotation, translation=translation)
    # When it is read, then its points are pye57's own reading of the scans (poses applied, invalid dropped)
    with pye57.E57(str(path)) as e57:
        truth = [e57.read_scan(i, ignore_missing_fields=True) for i in range(2)]
    expected = np.concatenate([np.column_stack([t[f"cartesian{a}"] for a in "XYZ"]) for t in truth])
    cloud, points, _ = read_all(path)
    assert cloud.declared_points == 9000 and not cloud.colour
    assert np.abs(np.column_stack([points["x"], points["y"], points["z"]]) - expected).max() <= HALF_MM


def test_degrees_get_a_finer_frame_than_millimetres(tmp_path):
    # Given a table of longitude and latitude around a few hundred metres of Vienna
    rng = np.random.default_rng(3)
    lon, lat = 16.37 + rng.uniform(0, 0.004, 2000), 48.20 + rng.uniform(0, 0.003, 2000)
    h = rng.uniform(0, 30, 2000)
    path = tmp_path / "wgs84.csv"
    np.savetxt(path, np.column_stack([lon, lat, h]), fmt="%.9f", delimiter=",", header="x,y,z", comments="")
    # When it is read, then its frame keeps the nanodegrees written (a millimetre grid would be 100 m),
    # and the heights in metres on millimetres
    cloud, points, _ = read_all(path)
    assert cloud.frame.scale == (1e-8, 1e-8, 0.001) and cloud.frame.offset == (16.37, 48.2, 0.0)
    written = 0.5e-8 + 0.5e-9 + 1e-12  # half a step, and the file's own rounding to 1e-9
    assert np.abs(points["x"] - lon).max() <= written and np.abs(points["y"] - lat).max() <= written
    assert np.abs(points["z"] - h).max() <= HALF_MM


def test_a_small_reconstruction_in_arbitrary_units_keeps_its_detail(tmp_path, survey):
    # Given an SfM reconstruction of the survey shrunk to a few units, as COLMAP's fused.ply may be
    shrunk = {"x": (survey.x - 500_000) / 50, "y": (survey.y - 5_000_000) / 50, "z": (survey.z - 200) / 50}
    small = replace(survey, **shrunk)
    cloud, points, _ = read_all(cloud_files.write_ply(small, tmp_path / "fused.ply"))
    # When it is read, then its frame is finer than millimetres on every axis (10 µm of a unit, 0.5 mm of
    # the survey), and every point comes back within half of it
    assert cloud.frame.scale == (1e-5, 1e-5, 1e-5)
    assert np.abs(points["x"] - small.x).max() <= 0.51e-5 and np.abs(points["z"] - small.z).max() <= 0.51e-5


# PLY variants


def _ply(path: Path, header: list[str], body: bytes) -> Path:
    path.write_bytes(("\n".join(["ply", *header, "end_header"]) + "\n").encode() + body)
    return path


def test_a_big_endian_ply_with_normals_and_other_properties(tmp_path, survey):
    # Given a big-endian PLY with normals, an unknown property and diffuse_ colours, as some tools write
    rows = np.zeros(len(survey), [("x", ">f8"), ("y", ">f8"), ("z", ">f8"), ("nx", ">f4"), ("ny", ">f4"),
                                  ("nz", ">f4"), ("diffuse_red", "u1"), ("diffuse_green", "u1"),
                                  ("diffuse_blue", "u1"), ("confidence", ">i4")])  # fmt: skip
    rows["x"], rows["y"], rows["z"], rows["nz"] = survey.x, survey.y, survey.z, 1
    for channel in ("red", "green", "blue"):
        rows[f"diffuse_{channel}"] = getattr(survey, channel) >> 8
    types = {"f8": "double", "f4": "float", "u1": "uchar", "i4": "int"}
    properties = [f"property {types[rows.dtype[n].str[1:]]} {n}" for n in rows.dtype.names or ()]
    header = ["format binary_big_endian 1.0", f"element vertex {len(rows)}", *properties]
    path = _ply(tmp_path / "be.ply", header, rows.tobytes())
    # When it is read, then every point and colour comes back
    _, points, _ = read_all(path)
    assert_survey(points, survey)


def test_a_ply_with_faces_is_the_cloud_of_its_vertices(tmp_path, survey):
    # Given a binary PLY mesh: its vertices, then a face element of vertex lists
    vertices = np.zeros(len(survey), [("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    vertices["x"], vertices["y"], vertices["z"] = survey.x - 500_000, survey.y - 5_000_000, survey.z
    faces = np.zeros(100, [("n", "u1"), ("v", "<i4", 3)])
    faces["n"], faces["v"] = 3, np.arange(300).reshape(100, 3)
    header = ["format binary_little_endian 1.0", "comment made by a mesher",
              f"element vertex {len(vertices)}", "property float x", "property float y", "property float z",
              "element face 100", "property list uchar int vertex_indices"]  # fmt: skip
    path = _ply(tmp_path / "mesh.ply", header, vertices.tobytes() + faces.tobytes())
    # When it is read, then its vertices are the cloud, the faces noted and never read
    cloud, points, _ = read_all(path)
    assert cloud.extra["faces"] == 100 and cloud.extra["comments"] == ["made by a mesher"]
    assert not cloud.colour
    assert len(points["x"]) == len(survey)
    assert np.abs(points["x"] - vertices["x"]).max() <= HALF_MM


# Broken uploads


def refusal(path: Path, max_points: int = 10**9) -> InputError:
    with pytest.raises(InputError) as refused:
        list(read_chunks(open_cloud(path, max_points), chunk_points=CHUNK))
    return refused.value


def test_a_truncated_binary_ply_is_refused_before_a_read(tmp_path, survey):
    path = cloud_files.write_ply(survey, tmp_path / "cut.ply")
    path.write_bytes(path.read_bytes()[: -len(path.read_bytes()) // 3])
    refused = refusal(path)
    assert refused.code == "truncated_cloud" and "of the 12,000 its header declares" in refused.message


def test_a_truncated_ascii_ply_is_refused_where_it_ends(tmp_path, survey):
    path = cloud_files.write_ply(survey, tmp_path / "cut.ply", binary=False)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-100]))
    refused = refusal(path)
    assert refused.code == "truncated_cloud" and "after 11,900 of the 12,000" in refused.message


def test_a_ply_declaring_too_many_vertices_is_refused_by_its_header(tmp_path):
    header = ["format binary_little_endian 1.0", "element vertex 1000000000000", "property float x",
              "property float y", "property float z"]  # fmt: skip
    path = _ply(tmp_path / "bomb.ply", header, b"\0" * 120)
    assert refusal(path).code == "too_many_points"


def test_a_ply_without_coordinates_is_an_invalid_header(tmp_path):
    path = _ply(tmp_path / "odd.ply", ["format ascii 1.0", "element vertex 1", "property float u"], b"1\n")
    refused = refusal(path)
    assert refused.code == "invalid_header" and "no x, y and z" in refused.message


def test_nan_and_infinite_coordinates_are_refused_with_their_lines(tmp_path):
    refused = refusal(cloud_files.nan_xyz(tmp_path / "nan.csv"))
    assert refused.code == "invalid_coordinates"
    assert "4 points" in refused.message and "line 12, line 22, line 32, line 42" in refused.message


def test_a_table_past_max_points_is_refused(tmp_path, survey):
    # Given a table of 12,000 rows; its size says so before a row is parsed when it is far over the limit
    path = cloud_files.write_xyz(survey, tmp_path / "big.csv")
    assert refusal(path, max_points=5000).code == "too_many_points"
    # and its rows say so as they are read when it is near it
    refused = refusal(path, max_points=11_000)
    assert refused.code == "too_many_points" and "over 11,000 points" in refused.message


def test_an_e57_without_scans_holds_no_point_data(tmp_path):
    refused = refusal(cloud_files.empty_e57(tmp_path / "empty.e57"))
    assert refused.code == "empty_cloud" and "the E57 file holds no point data" in refused.message


@pytest.mark.parametrize("kind", ["text", "png"])
def test_what_is_no_point_cloud_is_refused(tmp_path, kind):
    # Given a PNG or a line of prose under a cloud's name, when it is opened, then it is no cloud
    refused = refusal(cloud_files.not_a_cloud(tmp_path / "notes.xyz", kind=kind))
    assert refused.code == "not_a_point_cloud"
    if kind == "text":
        assert "names no x, y and z columns" in refused.message


def test_a_table_whose_rows_break_is_corrupt(tmp_path, survey):
    path = cloud_files.write_xyz(survey, tmp_path / "broken.csv")
    lines = path.read_text().splitlines(keepends=True)
    lines[7000] = "1.0,2.0,oops\n"
    path.write_text("".join(lines))
    refused = refusal(path)
    assert refused.code == "corrupt_cloud" and "line 7,001 is not a row of numbers" in refused.message
