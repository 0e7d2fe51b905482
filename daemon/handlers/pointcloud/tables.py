"""PLY (binary of either byte order, or ASCII) and text tables (XYZ, CSV, TXT with a header line): their
headers read and checked, their rows streamed in chunks of `Raw` columns (raw.py). A PLY's vertices stop
at its declared count (its faces are never read); a table declares none and is counted as it is read.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from .raw import COLOUR, HEAD, Chunks, Opened, Raw, check_declared, ended, places

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


@dataclass(frozen=True)
class Rows:
    """Where a PLY's vertices or a table's rows are, and how to read them."""

    text: bool
    start: int  # bytes before the first row; for text, lines
    count: int | None  # rows; None: a table's, to the end
    dtype: np.dtype  # a binary row's
    delimiter: str | None  # None: runs of whitespace
    roles: dict[str, int]  # role → column
    names: tuple[str, ...]
    extra: dict[str, Any]


def open_rows(path: Path, kind: str, max_points: int) -> Opened:
    """A PLY's header, checked (its declared count; a binary body long enough for it, refused before a
    read), or a table's (no count: one estimated from its size is refused if far over `max_points`)."""
    rows = ply_rows(path) if kind == "ply" else table_rows(path)
    if rows.count is not None:
        check_declared(path.name, rows.count, max_points)
        body = path.stat().st_size - rows.start
        if not rows.text and rows.count * rows.dtype.itemsize > body:
            raise ended(path.name, max(0, body) // rows.dtype.itemsize, rows.count, "vertices")
        return Opened("ply", rows.count, rows.names, "red" in rows.roles, rows.extra)
    estimate = rows.extra["points_estimated"]
    if estimate > 2 * max_points:  # a fair guess; the exact count is checked as the rows are read
        raise InputError(f"{path.name}: about {estimate:,} points (from its size), over the {max_points:,} "
                         "this job takes (max_points)", code="too_many_points")  # fmt: skip
    extra = {**rows.extra, "max_points": max_points}  # declared: a guess, only for the read's progress
    return Opened("xyz", min(estimate, max_points), rows.names, "red" in rows.roles, extra)


def row_chunks(path: Path, rows: Rows, chunk_points: int) -> Chunks:
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
                raise ended(path.name, seen + (0 if table is None else len(table)), rows.count, "vertices")
            if table is None:
                return
            if rows.text:  # `_lines` keeps just the roles' columns
                got = {role: table[:, j] for j, role in enumerate(rows.roles)}
            else:
                got = {role: table[names[i]] for role, i in rows.roles.items()}
            where = places("line {:,}", rows.start + seen + 1) if rows.text else places("vertex {:,}", seen)
            yield Raw(got, where)
            seen += len(table)


def _lines(f: Any, rows: Rows, want: int, name: str, seen: int) -> np.ndarray | None:
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


def ply_rows(path: Path) -> Rows:
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
) -> Rows:
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
        names, roles = dtype.names or (), roles_of(dtype.names or ())
        if not {"x", "y", "z"} <= roles.keys():
            raise InputError(
                f"{name}: its vertices have no x, y and z ({', '.join(names)})", code="invalid_header"
            )
        extra = {"encoding": encoding, "elements": {e: n for e, n, _ in elements}, "comments": comments[:10],
                 "faces": sum(n for e, n, _ in elements[at + 1 :] if e == "face"),
                 "types": {role: dtype[i].str[1:] for role, i in roles.items()}}  # fmt: skip
        return Rows(encoding == "ascii", start, count, dtype, None, roles, names, extra)
    raise InputError(f"{name}: a PLY with no vertex element", code="invalid_header")


def table_rows(path: Path) -> Rows:
    """A table's header line: its delimiter (the first of comma, semicolon, tab in it, else whitespace)
    and columns, refused unless it names x, y and z and the next line is as many numbers."""
    with path.open("rb") as f:
        head = f.read(HEAD)
    lines = head.decode("utf-8-sig", "replace").splitlines()
    header = lines[0] if lines else ""
    delimiter = next((d for d in (",", ";", "\t") if d in header), None)
    names = tuple(n.strip() for n in header.split(delimiter))
    roles = roles_of(names)
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
    return Rows(True, 1, None, np.dtype(np.float64), delimiter, roles, names, extra)


def _numbers(fields: list[str], count: int) -> bool:
    try:
        return len([float(v.strip().strip('"')) for v in fields]) == count
    except ValueError:
        return False


def roles_of(names: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Role → the first column or property with one of its names; colours only if all three are there."""
    plain = [n.strip().strip("\"'").lstrip("/").strip().lower() for n in names]
    found = {role: min(plain.index(a) for a in aliases if a in plain)
             for role, aliases in ROLES.items() if any(a in plain for a in aliases)}  # fmt: skip
    return {role: i for role, i in found.items() if role not in COLOUR or set(COLOUR) <= found.keys()}
