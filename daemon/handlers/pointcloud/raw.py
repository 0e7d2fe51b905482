"""Points as read from an upload that is not LAS (PLY, E57, a text table; formats.py tells them apart),
before they are LAS records: their columns and where each is in the file (`Raw`), the frame chosen from
the first of them (`choose_frame`), the checks every reader shares (a declared count over `max_points`,
a file that ends early, coordinates that are not numbers), and the conversion to canonical records
(`to_record`). The readers are tables.py (PLY and text) and e57.py.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import laspy
import numpy as np

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
COLOUR = ("red", "green", "blue")
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
class Raw:
    """Points as read: a column per role (x, y, z, intensity, red, …), and where each is."""

    columns: dict[str, np.ndarray]
    where: Where

    def __len__(self) -> int:
        return len(self.columns["x"])


Chunks = Generator[Raw, None, None]


def choose_frame(name: str, sample: Raw | None) -> tuple[Triple, Triple]:
    """Scale and offset for a cloud whose first points are `sample`, from the kilometre (1e6 steps)
    below them. Millimetres when they span metres across; else (degrees, an object, a reconstruction in
    arbitrary units) the coarsest decade reaching `HEADROOM` spans, across and, unless in metres, up."""
    if sample is None:
        return (METRIC_SCALE,) * 3, (0.0, 0.0, 0.0)
    xyz = finite_xyz(name, sample)
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


def finite_xyz(name: str, raw: Raw) -> np.ndarray:
    xyz = np.column_stack([raw.columns["x"], raw.columns["y"], raw.columns["z"]]).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(xyz).all(axis=1))
    if len(bad):
        listed = ", ".join(raw.where(int(i)) for i in bad[:5]) + (", …" if len(bad) > 5 else "")
        raise InputError(f"{name}: {len(bad):,} points between {raw.where(0)} and {raw.where(len(raw) - 1)} "
                         f"have an x, y or z that is not a number (NaN or infinite): {listed}; remove or "
                         "fix them", code="invalid_coordinates")  # fmt: skip
    return xyz


def to_record(raw: Raw, cloud: Any) -> laspy.ScaleAwarePointRecord:
    """`raw` as a canonical record: single returns, class 0 (never classified) unless the file says."""
    frame, name = cloud.frame, cloud.path.name
    xyz = finite_xyz(name, raw)
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
            record[role] = to16(raw.columns[role], span)
    if "classification" in raw.columns:
        record.classification = np.clip(np.nan_to_num(raw.columns["classification"]), 0, 255).astype(np.uint8)
    return record


def to16(values: np.ndarray, span: Span | None) -> np.ndarray:
    low, high = span or (0.0, 65535.0)
    scaled = (np.nan_to_num(values.astype(np.float64)) - low) * (65535.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)


def span_of(values: np.ndarray, stored: str | None, colour: bool) -> Span:
    """An intensity's or colour's span: by its PLY type (`stored`; None for text) where that says, else
    by its first values (fractions up to 1 are 0–1, colours up to 255 8-bit). Later values outside the
    span are clipped."""
    if stored is not None and stored[0] in "iu":
        return (0.0, 255.0) if stored[1] == "1" else (0.0, 65535.0)
    top = float(np.nanmax(values)) if len(values) else 0.0
    if top <= 1.0 and (stored is not None or bool(np.any(values % 1))):
        return (0.0, 1.0)
    return (0.0, 255.0) if colour and top <= 255 else (0.0, 65535.0)


def places(template: str, start: int, kept: np.ndarray | None = None) -> Where:
    return lambda i: template.format(start + int(i if kept is None else kept[i]))


def check_declared(name: str, declared: int, max_points: int) -> None:
    """source.open_cloud's check, made before a bomb's body is looked at (its size, its first points)."""
    if declared > max_points:
        raise InputError(f"{name}: the header declares {declared:,} points, over the {max_points:,} this job "
                         "takes (max_points)", code="too_many_points")  # fmt: skip


def ended(name: str, seen: int, declared: int, what: str = "points") -> InputError:
    return InputError(f"{name}: the {what} end after {seen:,} of the {declared:,} its header declares",
                      code="truncated_cloud")  # fmt: skip
