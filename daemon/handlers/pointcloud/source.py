"""An uploaded point cloud, opened: what its header says (checked before a point is read) and its points
as a stream of chunks in one canonical record, never the whole cloud at once.

The canonical record is a LAS 1.4 point record (format 7 with colour, 6 without: the formats COPC
takes), in the cloud's own frame (scale and offset): coordinates stay the integers the file stored, so
nothing is lost between the upload and `cloud.copc.laz`. Text, PLY and E57 inputs get a frame chosen
from their first points (`formats.py`). Every reader raises `InputError` with a specific code for what is
wrong with the upload; anything else is ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import laspy
import numpy as np

from ...errors import InputError
from . import formats

CHUNK_POINTS = 1_000_000
"""Points per chunk: 36 MB of records, and a few times that in a stage's working arrays."""

COPY_FIELDS = ("X", "Y", "Z", "intensity", "return_number", "number_of_returns", "classification",
               "user_data", "scan_angle", "point_source_id", "gps_time")  # fmt: skip
COLOUR_FIELDS = ("red", "green", "blue")

SANE_SCALE = (1e-9, 1e3)
"""A LAS scale outside this (per axis, metres or degrees per integer step) is a broken header: below it
an integer's range covers less than a metre, above it a point is placed to the kilometre."""

SANE_OFFSET = 1e9
"""|offset| above this puts the cloud beyond any Earth-bound coordinate system."""


@dataclass(frozen=True)
class Frame:
    """Scale and offset of the integer coordinates (LAS semantics: value = integer × scale + offset)."""

    scale: tuple[float, float, float]
    offset: tuple[float, float, float]

    def to_ints(self, xyz: np.ndarray) -> np.ndarray:
        ints = np.round((xyz - np.asarray(self.offset)) / np.asarray(self.scale))
        if ints.size and (np.abs(ints).max() >= 2**31):
            raise InputError(
                "coordinates too far from the cloud's offset for its scale (over 2^31 steps)",
                code="invalid_coordinates",
            )
        return ints.astype(np.int32)


@dataclass(frozen=True)
class CloudFile:
    """What an upload's header says, checked: see `open_cloud`."""

    path: Path
    format: str
    """"las", "laz" or "copc" (a LAZ that is also a COPC), "e57", "ply", "xyz"."""
    declared_points: int
    las_version: str | None
    point_format: int | None
    dimensions: tuple[str, ...]
    frame: Frame
    srs_wkt: str | None
    colour: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def record_format(self) -> laspy.PointFormat:
        """The canonical record's LAS point format: 7 with colour, 6 without."""
        return laspy.PointFormat(7 if self.colour else 6)


def open_cloud(path: Path, max_points: int) -> CloudFile:
    """The upload's header, read and checked: a format we read (`not_a_point_cloud`), a point count
    within `max_points` (`too_many_points`, from the header alone: a small LAZ may claim 10¹² points),
    a sane scale and offset (`invalid_header`), a coordinate system we know (`unknown_srs`)."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic == b"LASF":
        cloud = _open_las(path)
    elif (kind := formats.sniff(path)) is not None:  # PLY, E57 or a text table: by content, never by name
        found = formats.open_other(path, kind, max_points)
        cloud = CloudFile(path=path, format=found.format, declared_points=found.declared_points,
                          las_version=None, point_format=None, dimensions=found.dimensions,
                          frame=Frame(found.scale, found.offset), srs_wkt=None, colour=found.colour,
                          extra=found.extra)  # fmt: skip
    else:
        raise InputError(f"{path.name}: not a point cloud this worker reads", code="not_a_point_cloud")
    if cloud.declared_points > max_points:
        raise InputError(
            f"{path.name}: the header declares {cloud.declared_points:,} points, over the "
            f"{max_points:,} this job takes (max_points)",
            code="too_many_points",
        )
    return cloud


def _open_las(path: Path) -> CloudFile:
    try:
        with laspy.open(path) as reader:
            header = reader.header
            evlrs = reader.evlrs or []
    except (laspy.LaspyException, ValueError, OSError) as exc:
        raise InputError(f"{path.name}: a LAS header we cannot read ({exc})", code="corrupt_cloud") from None
    scale, offset = [float(s) for s in header.scales], [float(o) for o in header.offsets]
    if not all(SANE_SCALE[0] <= s <= SANE_SCALE[1] for s in scale) or not all(
        np.isfinite(o) and abs(o) <= SANE_OFFSET for o in offset
    ):
        raise InputError(
            f"{path.name}: the header's scale {scale} or offset {offset} is not a usable frame",
            code="invalid_header",
        )
    copc = any(v.user_id == "copc" for v in header.vlrs)
    names = tuple(header.point_format.dimension_names)
    return CloudFile(
        path=path,
        format="copc" if copc else ("laz" if header.are_points_compressed else "las"),
        declared_points=int(header.point_count),
        las_version=str(header.version),
        point_format=int(header.point_format.id),
        dimensions=names,
        frame=Frame((scale[0], scale[1], scale[2]), (offset[0], offset[1], offset[2])),
        srs_wkt=_srs_wkt(path.name, header, evlrs),
        colour="red" in names,
        extra={"bounds_declared": [list(map(float, header.mins)), list(map(float, header.maxs))]},
    )


def _srs_wkt(name: str, header: laspy.LasHeader, evlrs: list[Any]) -> str | None:
    """The cloud's coordinate system as WKT, None when the file names none; `unknown_srs` when it names
    one PROJ cannot read (a WKT VLR of nonsense, a GeoTIFF key with an unknown EPSG code)."""
    has_srs = any(
        v.record_id in (2111, 2112, 34735) for v in [*header.vlrs, *evlrs]
    )  # OGC WKT (coordinate system / math transform), GeoKeyDirectory
    if not has_srs:
        return None
    try:
        crs = header.parse_crs()
    except Exception as exc:  # noqa: BLE001 - laspy and pyproj raise many kinds for a bad SRS record
        raise InputError(f"{name}: its coordinate system record is not one PROJ knows ({exc})",
                         code="unknown_srs") from None  # fmt: skip
    if crs is None:
        raise InputError(f"{name}: its coordinate system record is not one PROJ knows", code="unknown_srs")
    return str(crs.to_wkt())


def read_chunks(cloud: CloudFile, chunk_points: int = CHUNK_POINTS) -> Iterator[laspy.ScaleAwarePointRecord]:
    """The points, `chunk_points` at a time, as canonical records in the cloud's frame. A file that ends
    before its header's count (`truncated_cloud`) or holds more (`point_count_mismatch`) is refused
    when it is found, so the caller must not publish anything before the stream ends."""
    if cloud.format in ("las", "laz", "copc"):
        yield from _las_chunks(cloud, chunk_points)
    else:  # a table declares no count, so the count check is the reader's own (formats.read_other)
        yield from formats.read_other(cloud, chunk_points)


def _las_chunks(cloud: CloudFile, chunk_points: int) -> Iterator[laspy.ScaleAwarePointRecord]:
    seen = 0
    try:
        with laspy.open(cloud.path) as reader:
            for points in reader.chunk_iterator(chunk_points):
                if len(points) == 0:
                    break
                seen += len(points)
                yield canonical(points, cloud)
    except (laspy.LaspyException, ValueError, OSError, RuntimeError) as exc:
        raise InputError(
            f"{cloud.path.name}: the points end or break after {seen:,} of the {cloud.declared_points:,} "
            f"declared ({exc})",
            code="truncated_cloud",
        ) from None
    if seen != cloud.declared_points:
        raise InputError(
            f"{cloud.path.name}: the header declares {cloud.declared_points:,} points, the file holds "
            f"{seen:,}",
            code="point_count_mismatch",
        )


def canonical(points: Any, cloud: CloudFile) -> laspy.ScaleAwarePointRecord:
    """`points` (a laspy record of any point format, in the cloud's frame) as the canonical record."""
    record = laspy.ScaleAwarePointRecord.zeros(
        len(points), point_format=cloud.record_format, scales=np.array(cloud.frame.scale),
        offsets=np.array(cloud.frame.offset),
    )  # fmt: skip
    names = set(points.point_format.dimension_names)
    for name in COPY_FIELDS + (COLOUR_FIELDS if cloud.colour else ()):
        if name in names:
            record[name] = points[name]
    return record
