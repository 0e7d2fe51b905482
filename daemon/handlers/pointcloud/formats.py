"""The uploads that are not LAS: PLY (binary of either byte order, or ASCII), E57, and text tables (XYZ,
CSV, TXT with a header line), streamed in chunks into `source.py`'s canonical records.

Told apart by their first bytes (`sniff`), never by name. None carries a LAS frame, so one is chosen from
the first points before any is turned into integers (`choose_frame`), nor a coordinate system (the job's
`srs_in` names it). source.py imports this module, so it cannot import source.py (the package stays
acyclic): it hands back a header's facts (`Opened`) and reads through a `CloudFile`'s attributes.

Long on purpose: three readers share the sniffing, the frame, the checks and the conversion to records,
and the change that brought them was confined to this one module (an E57 module would be the cut).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import laspy
import numpy as np
import pye57
from pye57 import libe57

from ...errors import InputError

SAMPLE_POINTS = 65_536
"""Points read at open to choose the frame and the colour and intensity depths: a first chunk of a few MB."""
METRIC_SCALE = 0.001
"""Millimetres, for first points that span metres: what survey software writes."""
METRIC_SPAN = 10.0
"""First points spanning less across are degrees, a small object or a reconstruction in arbitrary
units, which millimetres would flatten: they get a finer scale."""
HEADROOM = 1000.0
"""A finer scale still reaches this many times the first points' span beyond them."""
FINEST_SCALE = 1e-8
"""About a millimetre in degrees of latitude."""
OFFSET_STEPS = 1e6
"""Offsets are rounded down to this many steps (1 km at millimetres): round, and 1/2000 of the reach."""
MAX_COORDINATE = 1e9
"""Beyond any Earth-bound coordinate system (as source.SANE_OFFSET)."""
HEAD = 1 << 16
"""Bytes read to tell text from binary and to estimate a table's rows; the longest PLY header line."""
PLY_ENCODINGS = ("ascii", "binary_little_endian", "binary_big_endian")
PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}  # fmt: skip
ROLES = {"x": ("x", "easting", "east"), "y": ("y", "northing", "north"),
         "z": ("z", "elevation", "height", "altitude"), "red": ("red", "r", "diffuse_red"),
         "green": ("green", "g", "diffuse_green"), "blue": ("blue", "b", "diffuse_blue"),
         "intensity": ("intensity", "i", "scalar_intensity"),
         "classification": ("classification", "class", "scalar_classification")}  # fmt: skip
"""What a column or PLY property may be called (lower-cased, CloudCompare's leading // dropped)."""
COLOUR = ("red", "green", "blue")
E57_FIELDS = {"cartesianX": "x", "cartesianY": "y", "cartesianZ": "z", "sphericalRange": "range",
              "sphericalAzimuth": "azimuth", "sphericalElevation": "elevation", "intensity": "intensity",
              "cartesianInvalidState": "invalid", "sphericalInvalidState": "invalid", "colorRed": "red",
              "colorGreen": "green", "colorBlue": "blue"}  # fmt: skip
Span = tuple[float, float]
"""Values mapped onto LAS's 0–65535 for an intensity or colour: (0, 255) is 8-bit, × 257."""
Where = Callable[[int], str]
"""A point of a chunk → where it is in the file ("line 12", "vertex 11", "scan 0 point 10")."""
Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Opened:
    """A header, checked, with the frame chosen from its first points: what source.py makes a
    `CloudFile` of (no LAS version, point format or SRS)."""

    format: str
    declared_points: int
    dimensions: tuple[str, ...]
    colour: bool
    extra: dict[str, Any]
    scale: Triple = (METRIC_SCALE,) * 3
    offset: Triple = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class _Raw:
    """Points as read: a column per role (x, y, z, intensity, red, …), and where each is."""

    columns: dict[str, np.ndarray]
    where: Where

    def __len__(self) -> int:
        return len(self.columns["x"])


@dataclass(frozen=True)
class _Rows:
    """Where a PLY's vertices or a table's rows are, and how to read them."""

    text: bool
    start: int  # bytes before the first row; for text, lines
    count: int | None  # rows; None: a table's, to the end
    dtype: np.dtype  # a binary row's
    delimiter: str | None  # None: runs of whitespace
    roles: dict[str, int]  # role → column
    names: tuple[str, ...]
    extra: dict[str, Any]


Chunks = Generator[_Raw, None, None]


def sniff(path: Path) -> str | None:
    """ "ply", "e57" or "xyz" from the first bytes ("xyz" for any text: `open_other` says why one is no
    table of points), None for anything else."""
    with path.open("rb") as f:
        head = f.read(HEAD)
    if head.startswith((b"ply\n", b"ply\r\n")):
        return "ply"
    if head.startswith(b"ASTM-E57"):  # the signature opening E57's 48-byte file header
        return "e57"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not merely a character cut by the end of the head
            return None
    return "xyz" if head and b"\0" not in head else None


def open_other(path: Path, kind: str, max_points: int) -> Opened:
    """A sniffed file's header, checked (`invalid_header`, `too_many_points`, `truncated_cloud`,
    `empty_cloud`), with the frame and intensity and colour depths of its first `SAMPLE_POINTS` points."""
    opened = _open_e57(path, max_points) if kind == "e57" else _open_rows(path, kind, max_points)
    chunks = _chunks(path, kind, SAMPLE_POINTS)
    try:
        sample = next((raw for raw in chunks if len(raw)), None)
    finally:
        chunks.close()
    extra = dict(opened.extra)
    types = extra.pop("types", None)  # None for E57: its scans carry their own spans
    if types is not None and sample is not None:
        got = sample.columns
        if "intensity" in got:
            extra["intensity_span"] = _span(got["intensity"], types.get("intensity"), colour=False)
        if "red" in got:
            extra["colour_span"] = _span(np.concatenate([got[c] for c in COLOUR]), types.get("red"), True)
    scale, offset = choose_frame(path.name, sample)
    return replace(opened, scale=scale, offset=offset, extra=extra)


def read_other(cloud: Any, chunk_points: int) -> Iterator[laspy.ScaleAwarePointRecord]:
    """The points of an opened PLY, E57 or table (a `source.CloudFile`) as canonical records. PLY and E57
    readers check their headers' counts; a table declares none: it is refused past `max_points`."""
    limit, seen = cloud.extra.get("max_points"), 0
    for raw in _chunks(cloud.path, cloud.format, chunk_points):
        seen += len(raw)
        if limit is not None and seen > limit:
            raise InputError(f"{cloud.path.name}: over {limit:,} points, the most this job takes",
                             code="too_many_points")  # fmt: skip
        if len(raw):
            yield _record(raw, cloud)


def _chunks(path: Path, kind: str, chunk_points: int) -> Chunks:
    if kind == "e57":
        return _e57_chunks(path, chunk_points)
    return _row_chunks(path, _ply_rows(path) if kind == "ply" else _table_rows(path), chunk_points)


def choose_frame(name: str, sample: _Raw | None) -> tuple[Triple, Triple]:
    """Scale and offset for a cloud whose first points are `sample`, from the kilometre (1e6 steps)
    below them. Millimetres when they span metres across; else (degrees, an object, a reconstruction in
    arbitrary units) the coarsest decade reaching `HEADROOM` spans, across and, unless in metres, up."""
    if sample is None:
        return (METRIC_SCALE,) * 3, (0.0, 0.0, 0.0)
    xyz = _finite_xyz(name, sample)
    low, spans = xyz.min(axis=0), np.ptp(xyz, axis=0)
    across = _scale(float(max(spans[0], spans[1])))
    up = METRIC_SCALE if across == METRIC_SCALE else _scale(float(spans.max()))  # degrees: z in metres
    steps = np.array([across, across, up]) * OFFSET_STEPS
    x, y, z = (float(f"{v:.12g}") for v in np.floor(low / steps) * steps)  # no 0.30000000000000004
    if max(abs(x), abs(y), abs(z)) > MAX_COORDINATE:
        raise InputError(f"{name}: its first points lie at {low.tolist()}, beyond any coordinate system",
                         code="invalid_coordinates")  # fmt: skip
    return (across, across, up), (x, y, z)


def _scale(span: float) -> float:
    if span >= METRIC_SPAN:
        return METRIC_SCALE
    wanted = max(span, FINEST_SCALE) * HEADROOM / 2**31
    return min(METRIC_SCALE, max(FINEST_SCALE, float(10.0 ** np.ceil(np.log10(wanted)))))


def _finite_xyz(name: str, raw: _Raw) -> np.ndarray:
    xyz = np.column_stack([raw.columns["x"], raw.columns["y"], raw.columns["z"]]).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(xyz).all(axis=1))
    if len(bad):
        listed = ", ".join(raw.where(int(i)) for i in bad[:5]) + (", …" if len(bad) > 5 else "")
        raise InputError(f"{name}: {len(bad):,} points between {raw.where(0)} and {raw.where(len(raw) - 1)} "
                         f"have an x, y or z that is not a number (NaN or infinite): {listed}; remove or "
                         "fix them", code="invalid_coordinates")  # fmt: skip
    return xyz


def _record(raw: _Raw, cloud: Any) -> laspy.ScaleAwarePointRecord:
    """`raw` as a canonical record: single returns, class 0 (never classified) unless the file says."""
    frame, name = cloud.frame, cloud.path.name
    xyz = _finite_xyz(name, raw)
    try:
        ints = frame.to_ints(xyz)
    except InputError as exc:  # Frame.to_ints's own words name no place in the file
        raise InputError(f"{name}: points from {raw.where(0)} on lie too far from the first (near "
                         f"{list(frame.offset)}): does the file mix coordinate systems?",
                         code=exc.code) from None  # fmt: skip
    scales, offsets = np.array(frame.scale), np.array(frame.offset)
    record = laspy.ScaleAwarePointRecord.zeros(len(ints), point_format=cloud.record_format, scales=scales,
                                               offsets=offsets)  # fmt: skip
    record.X, record.Y, record.Z = ints[:, 0], ints[:, 1], ints[:, 2]
    record.return_number = record.number_of_returns = np.ones(len(ints), np.uint8)
    for role in ("intensity", *(COLOUR if cloud.colour else ())):
        if role in raw.columns:
            span = cloud.extra.get("colour_span" if role in COLOUR else "intensity_span")
            record[role] = _to16(raw.columns[role], span)
    if "classification" in raw.columns:
        record.classification = np.clip(np.nan_to_num(raw.columns["classification"]), 0, 255).astype(np.uint8)
    return record


def _to16(values: np.ndarray, span: Span | None) -> np.ndarray:
    low, high = span or (0.0, 65535.0)
    scaled = (np.nan_to_num(values.astype(np.float64)) - low) * (65535.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)


def _span(values: np.ndarray, stored: str | None, colour: bool) -> Span:
    """An intensity's or colour's span: by its PLY type (`stored`; None for text) where that says, else
    by its first values (fractions up to 1 are 0–1, colours up to 255 8-bit). Later values outside the
    span are clipped."""
    if stored is not None and stored[0] in "iu":
        return (0.0, 255.0) if stored[1] == "1" else (0.0, 65535.0)
    top = float(np.nanmax(values)) if len(values) else 0.0
    if top <= 1.0 and (stored is not None or bool(np.any(values % 1))):
        return (0.0, 1.0)
    return (0.0, 255.0) if colour and top <= 255 else (0.0, 65535.0)


def _roles(names: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Role → the first column or property with one of its names; colours only if all three are there."""
    plain = [n.strip().strip("\"'").lstrip("/").strip().lower() for n in names]
    found = {role: min(plain.index(a) for a in aliases if a in plain)
             for role, aliases in ROLES.items() if any(a in plain for a in aliases)}  # fmt: skip
    return {role: i for role, i in found.items() if role not in COLOUR or set(COLOUR) <= found.keys()}


def _places(template: str, start: int, kept: np.ndarray | None = None) -> Where:
    return lambda i: template.format(start + int(i if kept is None else kept[i]))


def _check_declared(name: str, declared: int, max_points: int) -> None:
    """source.open_cloud's check, made before a bomb's body is looked at (its size, its first points)."""
    if declared > max_points:
        raise InputError(f"{name}: the header declares {declared:,} points, over the {max_points:,} this job "
                         "takes (max_points)", code="too_many_points")  # fmt: skip


def _ended(name: str, seen: int, declared: int, what: str = "points") -> InputError:
    return InputError(f"{name}: the {what} end after {seen:,} of the {declared:,} its header declares",
                      code="truncated_cloud")  # fmt: skip


def _open_rows(path: Path, kind: str, max_points: int) -> Opened:
    """A PLY's header, checked (its declared count; a binary body long enough for it, refused before a
    read), or a table's (no count: one estimated from its size is refused if far over `max_points`)."""
    rows = _ply_rows(path) if kind == "ply" else _table_rows(path)
    if rows.count is not None:
        _check_declared(path.name, rows.count, max_points)
        body = path.stat().st_size - rows.start
        if not rows.text and rows.count * rows.dtype.itemsize > body:
            raise _ended(path.name, max(0, body) // rows.dtype.itemsize, rows.count, "vertices")
        return Opened("ply", rows.count, rows.names, "red" in rows.roles, rows.extra)
    estimate = rows.extra["points_estimated"]
    if estimate > 2 * max_points:  # a fair guess; the exact count is checked as the rows are read
        raise InputError(f"{path.name}: about {estimate:,} points (from its size), over the {max_points:,} "
                         "this job takes (max_points)", code="too_many_points")  # fmt: skip
    extra = {**rows.extra, "max_points": max_points}  # declared: a guess, only for the read's progress
    return Opened("xyz", min(estimate, max_points), rows.names, "red" in rows.roles, extra)


def _row_chunks(path: Path, rows: _Rows, chunk_points: int) -> Chunks:
    """`chunk_points` rows at a time: binary ones by numpy from their offset, lines through numpy's text
    parser (blank ones dropped). A PLY's stop at its vertex count: its faces are never read."""
    seen, names = 0, rows.dtype.names or ()
    with path.open(encoding="utf-8-sig", errors="replace") if rows.text else path.open("rb") as f:
        if rows.text:  # past the header, and any elements before a PLY's vertices
            next(itertools.islice(f, rows.start, rows.start), None)
        else:
            f.seek(rows.start)
        while rows.count is None or seen < rows.count:
            want = chunk_points if rows.count is None else min(chunk_points, rows.count - seen)
            table = _lines(f, rows, want, path.name, seen) if rows.text else np.fromfile(f, rows.dtype, want)
            if rows.count is not None and (table is None or len(table) < want):
                raise _ended(path.name, seen + (0 if table is None else len(table)), rows.count, "vertices")
            if table is None:
                return
            if rows.text:  # `_lines` keeps just the roles' columns
                got = {role: table[:, j] for j, role in enumerate(rows.roles)}
            else:
                got = {role: table[names[i]] for role, i in rows.roles.items()}
            where = _places("line {:,}", rows.start + seen + 1) if rows.text else _places("vertex {:,}", seen)
            yield _Raw(got, where)
            seen += len(table)


def _lines(f: Any, rows: _Rows, want: int, name: str, seen: int) -> np.ndarray | None:
    """The next `want` lines' numbers in `rows.roles`' columns, in that order; None at the end."""
    lines = list(itertools.islice(f, want))
    if not lines:
        return None
    body, usecols = [line for line in lines if line.strip()], list(rows.roles.values())
    if not body:  # blank lines only (numpy would warn)
        return np.zeros((0, len(usecols)))
    try:
        return np.loadtxt(
            body, delimiter=rows.delimiter, usecols=usecols, ndmin=2, comments=None, quotechar='"'
        )
    except ValueError as exc:  # numpy names the row within the chunk (blank lines aside)
        first, row = rows.start + seen + 1, re.search(r"at row (\d+)", str(exc))
        where = f"line {first + int(row[1]):,}" if row else f"lines {first:,}–{first + len(lines) - 1:,}"
        raise InputError(f"{name}: {where} is not a row of numbers ({exc})", code="corrupt_cloud") from None


def _ply_rows(path: Path) -> _Rows:
    """PLY's header (format, comment or obj_info, element NAME COUNT, property TYPE NAME or property list
    COUNT_TYPE ITEM_TYPE NAME, end_header) and where its vertices are in the body."""
    encoding, lines, comments = "", 0, []
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []  # name, count, [(property, type or "list")]
    with path.open("rb") as f:
        while (line := f.readline(HEAD).decode("ascii", "replace")).strip() != "end_header":
            words, lines = line.split(), lines + 1
            if not line.endswith("\n"):  # the end of the file, or a line no header has
                raise InputError(f"{path.name}: a PLY header with no end_header line", code="invalid_header")
            try:
                if words[0] == "format" and words[1] in PLY_ENCODINGS:
                    encoding = words[1]
                elif words[0] in ("comment", "obj_info"):
                    comments.append(line.strip().partition(" ")[2])
                elif words[0] == "element":
                    elements.append((words[1], int(words[2]), []))
                elif words[0] == "property":
                    elements[-1][2].append((words[-1], "list" if words[1] == "list" else PLY_TYPES[words[1]]))
                elif lines > 1 or words != ["ply"]:
                    raise ValueError(line)
            except (IndexError, KeyError, ValueError):
                raise InputError(f"{path.name}: a PLY header line we cannot read: {line.strip()[:80]!r}",
                                 code="invalid_header") from None  # fmt: skip
        start = f.tell() if encoding != "ascii" else lines + 1
    if not encoding:
        raise InputError(f"{path.name}: a PLY header with no format line", code="invalid_header")
    return _vertices(path.name, encoding, start, elements, comments)


def _vertices(
    name: str,
    encoding: str,
    start: int,
    elements: list[tuple[str, int, list[tuple[str, str]]]],
    comments: list[str],
) -> _Rows:
    """The vertex element: its rows' type, and what comes before them in the body (bytes; ASCII: lines)."""
    order = "<" if encoding == "binary_little_endian" else ">"
    for at, (element, count, properties) in enumerate(elements):
        lists = any(kind == "list" for _, kind in properties)
        try:
            dtype = np.dtype([(p, order + kind) for p, kind in properties if kind != "list"])
        except ValueError:  # a property named twice
            raise InputError(f"{name}: its {element}s repeat a property", code="invalid_header") from None
        if lists and (element == "vertex" or encoding != "ascii"):  # rows of unknown length
            raise InputError(f"{name}: its {element} element of lists is, or comes before, its vertices",
                             code="invalid_header")  # fmt: skip
        if element != "vertex":
            start += count * (1 if encoding == "ascii" else dtype.itemsize)
            continue
        names, roles = dtype.names or (), _roles(dtype.names or ())
        if not {"x", "y", "z"} <= roles.keys():
            raise InputError(
                f"{name}: its vertices have no x, y and z ({', '.join(names)})", code="invalid_header"
            )
        extra = {"encoding": encoding, "elements": {e: n for e, n, _ in elements}, "comments": comments[:10],
                 "faces": sum(n for e, n, _ in elements[at + 1 :] if e == "face"),
                 "types": {role: dtype[i].str[1:] for role, i in roles.items()}}  # fmt: skip
        return _Rows(encoding == "ascii", start, count, dtype, None, roles, names, extra)
    raise InputError(f"{name}: a PLY with no vertex element", code="invalid_header")


def _table_rows(path: Path) -> _Rows:
    """A table's header line: its delimiter (the first of comma, semicolon, tab in it, else whitespace)
    and columns, refused unless it names x, y and z and the next line is as many numbers."""
    with path.open("rb") as f:
        head = f.read(HEAD)
    lines = head.decode("utf-8-sig", "replace").splitlines()
    header = lines[0] if lines else ""
    delimiter = next((d for d in (",", ";", "\t") if d in header), None)
    names = tuple(n.strip() for n in header.split(delimiter))
    roles = _roles(names)
    if not {"x", "y", "z"} <= roles.keys():
        raise InputError(f"{path.name}: text whose first line names no x, y and z columns ({header[:60]!r}); "
                         "a point table starts with a line such as 'x,y,z,red,green,blue'",
                         code="not_a_point_cloud")  # fmt: skip
    if len(lines) > 1 and not _numbers(lines[1].split(delimiter), len(names)):
        raise InputError(f"{path.name}: the line after its header is not {len(names)} numbers "
                         f"({lines[1][:60]!r})", code="not_a_point_cloud")  # fmt: skip
    size, body = path.stat().st_size, len(head) - len(head.split(b"\n", 1)[0]) - 1
    rows = head.count(b"\n") - 1  # the body's whole lines in the head
    estimate = len(lines) - 1 if len(head) == size else round((size - len(head) + body) * rows / max(body, 1))
    extra = {"delimiter": delimiter or "whitespace", "points_estimated": estimate, "types": {}}
    return _Rows(True, 1, None, np.dtype(np.float64), delimiter, roles, names, extra)


def _numbers(fields: list[str], count: int) -> bool:
    try:
        return len([float(v.strip().strip('"')) for v in fields]) == count
    except ValueError:
        return False


def _open_e57(path: Path, max_points: int) -> Opened:
    try:
        with pye57.E57(str(path)) as e57:
            scans = [e57.get_header(i) for i in range(e57.scan_count)]
            counts, fields = [int(s.point_count) for s in scans], {f for s in scans for f in s.point_fields}
    except libe57.E57Exception as exc:  # a cut-short file fails here too, on a page's checksum
        raise InputError(f"{path.name}: an E57 we cannot read ({exc})", code="corrupt_cloud") from None
    if sum(counts) == 0:
        raise InputError(f"{path.name}: the E57 file holds no point data ({len(scans)} scans, no points)",
                         code="empty_cloud")  # fmt: skip
    _check_declared(path.name, sum(counts), max_points)
    colour = {"colorRed", "colorGreen", "colorBlue"} <= fields
    return Opened(
        "e57", sum(counts), tuple(sorted(fields)), colour, {"scans": len(scans), "scan_points": counts}
    )


def _e57_chunks(path: Path, chunk_points: int) -> Chunks:
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
    spans = {"intensity": _e57_span(scan, "intensityLimits", "intensityMinimum", "intensityMaximum"),
             "colour": _e57_span(scan, "colorLimits", "colorRedMinimum", "colorRedMaximum")}  # fmt: skip
    reader, seen = scan.points.reader(buffers), 0
    try:
        while n := reader.read():
            got = {E57_FIELDS[f]: array[:n] for f, array in arrays.items()}
            kept = np.flatnonzero(got.get("invalid", np.zeros(n)) == 0)  # 1: a direction only, 2: nothing
            xyz = _e57_local(got)[kept] @ scan.rotation_matrix.T + scan.translation  # the pose, as read_scan
            columns = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
            for role in ("intensity", *COLOUR):
                if role in got:
                    columns[role] = _to16(got[role][kept], spans["colour" if role in COLOUR else role])
            yield _Raw(columns, _places(f"scan {index} point {{:,}}", seen, kept))
            seen += n
    except libe57.E57Exception as exc:
        raise InputError(
            f"{name}: scan {index} breaks after {seen:,} points ({exc})", code="truncated_cloud"
        ) from None
    finally:
        reader.close()
    if seen < scan.point_count:
        raise _ended(name, seen, int(scan.point_count), f"points of scan {index}")


def _e57_local(got: dict[str, np.ndarray]) -> np.ndarray:
    """A scan's own coordinates: cartesian, or spherical (range, azimuth, elevation) as pye57 turns them."""
    if "x" in got:
        return np.column_stack([got["x"], got["y"], got["z"]])
    flat, azimuth = got["range"] * np.cos(got["elevation"]), got["azimuth"]
    return np.column_stack(
        [flat * np.cos(azimuth), flat * np.sin(azimuth), got["range"] * np.sin(got["elevation"])]
    )


def _e57_span(scan: Any, group: str, low: str, high: str) -> Span | None:
    """A scan's intensityLimits or colorLimits: what its sensor can give, which E57 maps onto the full
    range. None (values taken as 16-bit, clipped) for a scan without them."""
    try:
        span = (float(scan.node[group][low].value()), float(scan.node[group][high].value()))
    except libe57.E57Exception:
        return None
    return span if np.isfinite(span).all() and span[1] > span[0] else None
