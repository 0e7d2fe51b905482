"""E57 scans (libE57 through pye57): the header checked (no point data is `empty_cloud`), every scan read
in chunks of `Raw` columns (raw.py) with its pose applied and its invalid points dropped, intensity and
colour mapped from the scan's own limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pye57
from pye57 import libe57

from ...errors import InputError
from .raw import COLOUR, Chunks, Opened, Raw, Span, check_declared, ended, places, to16

E57_FIELDS = {"cartesianX": "x", "cartesianY": "y", "cartesianZ": "z", "sphericalRange": "range",
              "sphericalAzimuth": "azimuth", "sphericalElevation": "elevation", "intensity": "intensity",
              "cartesianInvalidState": "invalid", "sphericalInvalidState": "invalid", "colorRed": "red",
              "colorGreen": "green", "colorBlue": "blue"}  # fmt: skip


def open_e57(path: Path, max_points: int) -> Opened:
    try:
        with pye57.E57(str(path)) as e57:
            scans = [e57.get_header(i) for i in range(e57.scan_count)]
            counts, fields = [int(s.point_count) for s in scans], {f for s in scans for f in s.point_fields}
    except libe57.E57Exception as exc:  # a cut-short file fails here too, on a page's checksum
        raise InputError(f"{path.name}: an E57 we cannot read ({exc})", code="corrupt_cloud") from None
    if sum(counts) == 0:
        raise InputError(f"{path.name}: the E57 file holds no point data ({len(scans)} scans, no points)",
                         code="empty_cloud")  # fmt: skip
    check_declared(path.name, sum(counts), max_points)
    colour = {"colorRed", "colorGreen", "colorBlue"} <= fields
    return Opened(
        "e57", sum(counts), tuple(sorted(fields)), colour, {"scans": len(scans), "scan_points": counts}
    )


def e57_chunks(path: Path, chunk_points: int) -> Chunks:
    """Every scan in turn, `chunk_points` points at a time through libE57's reader (pye57's `read_scan`
    holds a whole scan), its pose applied, its invalid points dropped."""
    with pye57.E57(str(path)) as e57:
        for index in range(e57.scan_count):
            yield from _scan_chunks(e57, index, chunk_points, path.name)


def _scan_chunks(e57: Any, index: int, chunk_points: int, name: str) -> Chunks:
    scan = e57.get_header(index)
    fields = [f for f in E57_FIELDS if f in scan.point_fields]
    if not ({"x", "y", "z"} <= {E57_FIELDS[f] for f in fields} or "sphericalRange" in fields):
        raise InputError(
            f"{name}: scan {index} has no cartesian or spherical coordinates", code="invalid_header"
        )
    capacity = max(1, min(chunk_points, int(scan.point_count)))
    arrays = {f: np.empty(capacity, np.float64) for f in fields}  # libE57 converts any field to double
    buffers = libe57.VectorSourceDestBuffer()
    for f, array in arrays.items():
        buffers.append(libe57.SourceDestBuffer(e57.image_file, f, array, capacity, True, True))
    spans = {"intensity": scan_span(scan, "intensityLimits", "intensityMinimum", "intensityMaximum"),
             "colour": scan_span(scan, "colorLimits", "colorRedMinimum", "colorRedMaximum")}  # fmt: skip
    reader, seen = scan.points.reader(buffers), 0
    try:
        while n := reader.read():
            got = {E57_FIELDS[f]: array[:n] for f, array in arrays.items()}
            kept = np.flatnonzero(got.get("invalid", np.zeros(n)) == 0)  # 1: a direction only, 2: nothing
            xyz = scan_local(got)[kept] @ scan.rotation_matrix.T + scan.translation  # the pose, as read_scan
            columns = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
            for role in ("intensity", *COLOUR):
                if role in got:
                    columns[role] = to16(got[role][kept], spans["colour" if role in COLOUR else role])
            yield Raw(columns, places(f"scan {index} point {{:,}}", seen, kept))
            seen += n
    except libe57.E57Exception as exc:
        raise InputError(
            f"{name}: scan {index} breaks after {seen:,} points ({exc})", code="truncated_cloud"
        ) from None
    finally:
        reader.close()
    if seen < scan.point_count:
        raise ended(name, seen, int(scan.point_count), f"points of scan {index}")


def scan_local(got: dict[str, np.ndarray]) -> np.ndarray:
    """A scan's own coordinates: cartesian, or spherical (range, azimuth, elevation) as pye57 turns them."""
    if "x" in got:
        return np.column_stack([got["x"], got["y"], got["z"]])
    flat, azimuth = got["range"] * np.cos(got["elevation"]), got["azimuth"]
    return np.column_stack(
        [flat * np.cos(azimuth), flat * np.sin(azimuth), got["range"] * np.sin(got["elevation"])]
    )


def scan_span(scan: Any, group: str, low: str, high: str) -> Span | None:
    """A scan's intensityLimits or colorLimits: what its sensor can give, which E57 maps onto the full
    range. None (values taken as 16-bit, clipped) for a scan without them."""
    try:
        span = (float(scan.node[group][low].value()), float(scan.node[group][high].value()))
    except libe57.E57Exception:
        return None
    return span if np.isfinite(span).all() and span[1] > span[0] else None
