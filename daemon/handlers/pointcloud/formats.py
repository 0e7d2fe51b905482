"""The uploads that are not LAS: PLY (binary of either byte order, or ASCII), E57, and text tables (XYZ,
CSV, TXT with a header line), streamed in chunks into `source.py`'s canonical records.

Told apart by their first bytes (`sniff`), never by name. None carries a LAS frame, so one is chosen from
the first points before any is turned into integers (raw.choose_frame), nor a coordinate system (the
job's `srs_in` names it). source.py imports this module, so it cannot import source.py (the package stays
acyclic): it hands back a header's facts (`Opened`) and reads through a `CloudFile`'s attributes. The
readers: tables.py (PLY and text), e57.py; what they share: raw.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import laspy
import numpy as np

from ...errors import InputError
from .e57 import e57_chunks, open_e57
from .raw import COLOUR, HEAD, SAMPLE_POINTS, Chunks, Opened, choose_frame, span_of, to_record
from .tables import open_rows, ply_rows, row_chunks, table_rows

__all__ = ["Opened", "open_other", "read_other", "sniff"]


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
    opened = open_e57(path, max_points) if kind == "e57" else open_rows(path, kind, max_points)
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
            extra["intensity_span"] = span_of(got["intensity"], types.get("intensity"), colour=False)
        if "red" in got:
            extra["colour_span"] = span_of(np.concatenate([got[c] for c in COLOUR]), types.get("red"), True)
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
            yield to_record(raw, cloud)


def _chunks(path: Path, kind: str, chunk_points: int) -> Chunks:
    if kind == "e57":
        return e57_chunks(path, chunk_points)
    return row_chunks(path, ply_rows(path) if kind == "ply" else table_rows(path), chunk_points)
