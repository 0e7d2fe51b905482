"""Point-cloud files of generated surveys (`clouds`), as customers upload them, and broken ones for the
point-cloud job's error tests.

LAS/LAZ by laspy (+ lazrs), E57 by pye57, the PNG by Pillow. PLY and text have no library in the venv
(plyfile is not installed): each is a text header plus numpy rows, which is all either format is.
The broken files are a few KB each; where laspy refuses to write the flaw, a sound file is written and
the flaw patched into the bytes of its header (offsets from the LAS 1.4 specification, table 3).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Literal

import laspy
import numpy as np
import pye57
import pyproj
from PIL import Image

from daemon.samples.clouds import Cloud, survey

LEGACY_POINT_COUNT = 107
"""Byte offset of the LAS header's 32-bit point count (0 in LAS 1.4 files past 2^32 - 1 points)."""
SCALES = 131
"""Byte offset of the three float64 scale factors x, y, z; the three offsets follow at 155."""
OFFSETS = 155
POINT_COUNT = 247
"""Byte offset of the 64-bit point count of LAS 1.4."""
UNKNOWN_EPSG = 32699
"""In the EPSG range of a GeoTIFF key and shaped like a UTM code ("zone 99N"), but not a code at all."""


def write_las(
    clouds: Cloud | Iterable[Cloud], path: str | Path, *, compress: bool | None = None,
    point_format: int | None = None, version: str = "1.4", scale: float = 0.001, truth: bool = False,
) -> Path:  # fmt: skip
    """A LAS, or LAZ if `compress` (by default: if `path` ends in .laz), of one cloud or of chunks
    written as they come (a 50 M point survey never in memory at once).

    Point format 7 (6 without colour), `scale` metres per unit and offsets rounded down from the first
    chunk's minimum to the kilometre; the CRS as laspy writes it for the version (a WKT VLR for
    formats 6+, GeoTIFF keys before). Classes are written as 1, unclassified, as a survey arrives,
    unless `truth`."""
    path = Path(path)
    chunks = iter([clouds] if isinstance(clouds, Cloud) else clouds)
    first = next(chunks, None)
    if first is None:
        raise ValueError("no clouds to write")
    header = laspy.LasHeader(
        point_format=point_format if point_format is not None else 7 if first.has_colour else 6,
        version=version,
    )
    header.scales = np.full(3, scale)
    if len(first):
        header.offsets = np.floor([first.x.min() / 1000, first.y.min() / 1000, 0]) * 1000
    header.add_crs(pyproj.CRS.from_epsg(first.epsg))
    compress = path.suffix.lower() == ".laz" if compress is None else compress
    with laspy.open(path, mode="w", header=header, do_compress=compress) as out:
        for cloud in itertools.chain([first], chunks):
            out.write_points(_record(cloud, header, truth))
    return path


def _record(cloud: Cloud, header: laspy.LasHeader, truth: bool) -> laspy.ScaleAwarePointRecord:
    points = laspy.ScaleAwarePointRecord.zeros(len(cloud), header=header)
    points.x, points.y, points.z = cloud.x, cloud.y, cloud.z
    points.intensity = cloud.intensity
    points.return_number, points.number_of_returns = cloud.return_number, cloud.number_of_returns
    points.classification = cloud.classification if truth else np.ones(len(cloud), np.uint8)
    dimensions = set(header.point_format.dimension_names)
    if "gps_time" in dimensions:
        points.gps_time = cloud.gps_time
    if "red" in dimensions and cloud.red is not None:
        points.red, points.green, points.blue = cloud.red, cloud.green, cloud.blue
    return points


def _colours_8bit(cloud: Cloud) -> dict[str, np.ndarray]:
    """Red, green and blue as 0–255, as PLY, text and E57 files carry them (LAS has 16 bits)."""
    channels = {"red": cloud.red, "green": cloud.green, "blue": cloud.blue}
    return {name: (c >> 8).astype(np.uint8) for name, c in channels.items() if c is not None}


def write_ply(cloud: Cloud, path: str | Path, *, binary: bool = True) -> Path:
    """A PLY of vertices only: x, y, z as double, red, green, blue as uchar, intensity as ushort;
    binary little-endian, or ASCII with millimetres. PLY has no CRS: it is named in a comment only."""
    columns = [("x", cloud.x, "double"), ("y", cloud.y, "double"), ("z", cloud.z, "double")]
    columns += [(name, c, "uchar") for name, c in _colours_8bit(cloud).items()]
    columns.append(("intensity", cloud.intensity, "ushort"))
    numpy_type = {"double": "<f8", "uchar": "u1", "ushort": "<u2"}
    rows = np.empty(len(cloud), [(name, numpy_type[kind]) for name, _, kind in columns])
    for name, values, _ in columns:
        rows[name] = values
    header = [
        "ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
        f"comment crs EPSG:{cloud.epsg}", f"element vertex {len(cloud)}",
        *(f"property {kind} {name}" for name, _, kind in columns), "end_header",
    ]  # fmt: skip
    path = Path(path)
    with path.open("wb") as out:
        out.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            rows.tofile(out)
        else:
            np.savetxt(out, rows, fmt=["%.3f"] * 3 + ["%d"] * (len(columns) - 3))
    return path


def write_xyz(cloud: Cloud, path: str | Path, *, delimiter: str | None = None, header: bool = True) -> Path:
    """A text file of x, y, z (millimetres), intensity and 8-bit red, green, blue, one point a line:
    comma-separated for .csv, space-separated otherwise (.xyz, .txt), with a line of column names
    unless not `header`."""
    path = Path(path)
    separator = delimiter if delimiter is not None else "," if path.suffix.lower() == ".csv" else " "
    colours = _colours_8bit(cloud)
    names = ["x", "y", "z", "intensity", *colours]
    table = np.column_stack([cloud.x, cloud.y, cloud.z, cloud.intensity, *colours.values()])
    np.savetxt(
        path, table, fmt=["%.3f"] * 3 + ["%d"] * (len(names) - 3), delimiter=separator,
        header=separator.join(names) if header else "", comments="",
    )  # fmt: skip
    return path


def write_e57(cloud: Cloud, path: str | Path) -> Path:
    """An E57 with one scan of the cloud (at least one point), with intensity, 8-bit colour and the
    per-point validity flags scanners write (all valid).

    pye57 stores coordinates as float32, which near 5 000 000 m keeps only half a metre; so the points
    are written relative to a corner rounded from their minimum, and that corner is the scan's pose
    (a translation), as a terrestrial scanner stores each station. A reader must apply the pose, as
    `pye57.E57.read_scan` does; `read_scan_raw` returns the local coordinates. E57 carries no CRS."""
    corner = np.floor([cloud.x.min() / 100, cloud.y.min() / 100, 0]) * 100
    data = {
        "cartesianX": cloud.x - corner[0], "cartesianY": cloud.y - corner[1], "cartesianZ": cloud.z,
        "intensity": cloud.intensity.astype(np.float32),
        "cartesianInvalidState": np.zeros(len(cloud), np.int8),
    }  # fmt: skip
    if cloud.has_colour:
        data.update({f"color{name.title()}": c for name, c in _colours_8bit(cloud).items()})
    with pye57.E57(str(path), mode="w") as e57:
        e57.write_scan_raw(data, name="survey", translation=corner)
    return Path(path)


def _small(points: int = 100) -> Cloud:
    """A few points of a survey of a 30 m square: enough for a file, small enough for a few KB."""
    return survey(points, extent_m=30.0)


def _patch(path: Path, offset: int, layout: str, *values: float) -> Path:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(struct.pack(layout, *values))
    return path


def truncated_laz(path: str | Path) -> Path:
    """A LAZ of 500 points cut halfway through its compressed points (header and VLRs intact, the
    chunk table lost): it opens, and fails when its points are read."""
    path = write_las(_small(500), path, compress=True)
    with laspy.open(path) as reader:
        start = reader.header.offset_to_point_data
    data = path.read_bytes()
    path.write_bytes(data[: start + (len(data) - start) // 2])
    return path


def lying_count_las(path: str | Path) -> Path:
    """A LAS 1.4 of 100 points whose header claims 200 (both the legacy and the 64-bit count)."""
    path = write_las(_small(), path, compress=False)
    _patch(path, LEGACY_POINT_COUNT, "<I", 200)
    return _patch(path, POINT_COUNT, "<Q", 200)


def zero_points_las(path: str | Path) -> Path:
    """A sound LAS 1.4 with its CRS and no points."""
    return write_las(survey(0), path, compress=False)


def identical_points_las(path: str | Path, copies: int = 1000) -> Path:
    """A LAS of `copies` copies of one point: same x, y, z, time and attributes (a zero-size bounding
    box, every point its neighbours' duplicate)."""
    return write_las(_small(1).select(np.zeros(copies, np.int64)), path, compress=False)


def nan_xyz(path: str | Path) -> Path:
    """A CSV of 50 points with a header, where x of row 10 is nan, y of row 20 inf, z of row 30 -inf
    and row 40 is nan in all three (rows counted from 0 after the header)."""
    cloud = _small(50)
    x, y, z = cloud.x.copy(), cloud.y.copy(), cloud.z.copy()
    x[10], y[20], z[30] = np.nan, np.inf, -np.inf
    x[40] = y[40] = z[40] = np.nan
    return write_xyz(replace(cloud, x=x, y=y, z=z), path, delimiter=",")


def absurd_scale_las(path: str | Path, *, field: Literal["scale", "offset"] = "scale") -> Path:
    """A LAS of 100 points, written soundly, then its header patched (laspy cannot write it, since
    the integers would not fit): with `field` "scale", the x, y and z scale factors are 1e-12, so
    all points decode to within a few µm of the offsets; with "offset", the x, y, z offsets are
    1e300, so coordinates are finite but their squares are not. The header's bounds are left as
    written, so they disagree with the points."""
    path = write_las(_small(), path, compress=False)
    return _patch(
        path, SCALES if field == "scale" else OFFSETS, "<3d", *[1e-12 if field == "scale" else 1e300] * 3
    )


def bomb_laz(path: str | Path) -> Path:
    """A LAZ of 100 points (a few KB) whose LAS 1.4 header claims 10^12 (64-bit count at byte 247;
    the legacy 32-bit count 0, as the specification wants past 2^32 - 1): a reader that allocates
    for the header's count asks for 36 TB."""
    path = write_las(_small(), path, compress=True)
    _patch(path, LEGACY_POINT_COUNT, "<I", 0)
    return _patch(path, POINT_COUNT, "<Q", 10**12)


def unknown_srs_las(path: str | Path, *, kind: Literal["wkt", "epsg"] = "wkt") -> Path:
    """A LAS of 100 points whose CRS cannot be resolved; pyproj raises CRSError on parsing it.

    "wkt": LAS 1.4, point format 7, with a WKT VLR reading "not a coordinate system" (the spec's
    place for the CRS at that format). "epsg": LAS 1.2, point format 3, with GeoTIFF keys whose
    ProjectedCSTypeGeoKey is `UNKNOWN_EPSG` (a 16-bit key: 99999 would not fit)."""
    if kind == "wkt":
        path = write_las(_small(), path, compress=False)
        wkt = pyproj.CRS.from_epsg(32633).to_wkt().encode()
        return _replace_once(path, wkt, b"not a coordinate system".ljust(len(wkt), b"\0"))  # same length
    path = write_las(_small(), path, compress=False, point_format=3, version="1.2")
    key = "<4H", 3072, 0, 1  # ProjectedCSTypeGeoKey, its value inline, one value: an EPSG code
    return _replace_once(path, struct.pack(*key, 32633), struct.pack(*key, UNKNOWN_EPSG))


def _replace_once(path: Path, old: bytes, new: bytes) -> Path:
    """`path` with the one occurrence of `old` replaced (refused if laspy wrote it otherwise)."""
    data = path.read_bytes()
    if data.count(old) != 1:
        raise RuntimeError(f"{path.name}: expected one {old[:40]!r}, found {data.count(old)}")
    path.write_bytes(data.replace(old, new))
    return path


def empty_e57(path: str | Path) -> Path:
    """A sound E57 with its header and no scans at all (`data3D` empty): pye57 opens it, and it has
    no points to read."""
    pye57.E57(str(path), mode="w").close()
    return Path(path)


def not_a_cloud(path: str | Path, *, kind: Literal["png", "text"] = "png") -> Path:
    """Something else under a point cloud's name: a 64 px grey PNG, or a line of prose."""
    path = Path(path)
    if kind == "png":
        Image.new("L", (64, 64), 128).save(path, format="PNG")
    else:
        path.write_text("These are the survey notes, not the survey.\n")
    return path
