"""The pointcloud job's stages: download → read → analyze → clean → classify → tile → export.

Each stage works in its own folder and is recorded and checkpointed when it finishes (handlers/
stages.py), so an attempt after a spot notice resumes at the first unfinished one. The points stream
through every stage: `read` turns the upload into canonical records on disk once, `clean` cuts them
into the octree's tiles with halos (tiling.py) and every later stage works a tile at a time, so memory
follows a tile's size, never the cloud's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import laspy
import numpy as np

from ..base import Context
from ..stages import StageRecords, restore_checkpoint, run_stage
from . import clean as noise
from .classify import ground, ground_classes
from .copc import write_copc
from .describe import describe
from .octree import Octree
from .params import PointcloudParams
from .preview import TopView
from .source import CloudFile, Frame, open_cloud, read_chunks
from .stats import Tally
from .tiles3d import write_tileset
from .tiling import Tiles, partition

STAGES = ("download", "read", "analyze", "clean", "classify", "tile", "export")
SPILL_CHUNK = 1_000_000
MIN_HALO_M = 5.0


def run(ctx: Context) -> None:
    params: PointcloudParams = ctx.params
    root = ctx.workdir
    records = StageRecords(root, STAGES)
    restore_checkpoint(ctx, records)

    def stage(name: str, work: Callable[[], dict[str, Any]], *, folder: bool = True) -> dict[str, Any]:
        with ctx.stage(name):
            return run_stage(ctx, records, name, work, folders=(root / name,) if folder else ())

    with ctx.stage("download"):  # the upload is needed only until the read stage has finished
        upload = None if records.finished("read") else ctx.fetch_inputs()[0]
    read = stage("read", lambda: _read(upload, root / "read", params, ctx))
    analysis = stage("analyze", lambda: describe(read, _spill(root, read), params), folder=False)
    cleaned = stage("clean", lambda: _clean(root, read, analysis, params, ctx))
    classified = stage("classify", lambda: _classify(root, read, analysis, params, ctx))
    tiled = stage("tile", lambda: _tile(root, read, analysis, params, ctx))
    with ctx.stage("export"):
        manifest = {"job_id": ctx.job_id, "kind": "pointcloud", "attempt": ctx.attempt,
                    "source": read["source"], "analysis": analysis, "clean": cleaned, "classify": classified,
                    "outputs": tiled, "timings_s": dict(ctx.timings)}  # fmt: skip
        _export(ctx, root, manifest)


# -- read: the upload as canonical records, once ----------------------------------------------------------


def _read(upload: Path | None, folder: Path, params: PointcloudParams, ctx: Context) -> dict[str, Any]:
    if upload is None:  # (read's record exists whenever the download was skipped)
        raise RuntimeError("the read stage runs only after a download")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cloud = open_cloud(upload, params.max_points)
    tally = Tally()
    with (folder / "points.bin").open("wb") as out:
        for chunk in read_chunks(cloud):
            tally.add(chunk)
            out.write(chunk.array.tobytes())
            ctx.progress(min(1.0, tally.points / max(cloud.declared_points, 1)))
    tally.check(upload.name)
    return {"source": _source_facts(cloud, upload), "tally": tally.report(),
            "frame": {"scale": list(cloud.frame.scale), "offset": list(cloud.frame.offset)},
            "point_format": cloud.record_format.id, "srs_wkt": cloud.srs_wkt}  # fmt: skip


def _source_facts(cloud: CloudFile, upload: Path) -> dict[str, Any]:
    return {"name": upload.name, "bytes": upload.stat().st_size, "format": cloud.format,
            "las_version": cloud.las_version, "point_format": cloud.point_format,
            "dimensions": list(cloud.dimensions), "declared_points": cloud.declared_points}  # fmt: skip


def _frame(read: dict[str, Any]) -> Frame:
    scale, offset = read["frame"]["scale"], read["frame"]["offset"]
    return Frame((scale[0], scale[1], scale[2]), (offset[0], offset[1], offset[2]))


def _spill(root: Path, read: dict[str, Any]) -> Callable[[], Iterator[laspy.ScaleAwarePointRecord]]:
    """The read stage's records, chunk by chunk (a memory map: nothing held)."""
    point_format, frame = laspy.PointFormat(read["point_format"]), _frame(read)

    def chunks() -> Iterator[laspy.ScaleAwarePointRecord]:
        array = np.memmap(root / "read" / "points.bin", dtype=point_format.dtype(), mode="r")
        for start in range(0, len(array), SPILL_CHUNK):
            yield laspy.ScaleAwarePointRecord(np.array(array[start : start + SPILL_CHUNK]), point_format,
                                              np.array(frame.scale), np.array(frame.offset))  # fmt: skip

    return chunks


def _tiles(root: Path, read: dict[str, Any], analysis: dict[str, Any], params: PointcloudParams) -> Tiles:
    tally = read["tally"]
    frame = _frame(read)
    octree = Octree.around(np.array(tally["bounds"]["min"]), np.array(tally["bounds"]["max"]),
                           tally["points"], max(frame.scale))  # fmt: skip
    return Tiles(root / "clean" / "tiles", octree, _halo(analysis, params), frame,
                 laspy.PointFormat(read["point_format"]))  # fmt: skip


def _halo(analysis: dict[str, Any], params: PointcloudParams) -> float:
    """Wide enough for an ELM column and twenty points' spacing of neighbours, and for the cloth to
    drape over a tile's edge (several cloth cells)."""
    spacing = analysis["density"]["spacing_m"] or 1.0
    wanted = [MIN_HALO_M, 20 * spacing, 10 * params.csf.cloth_resolution]
    if params.elm is not None:
        wanted.append(params.elm.cell)
    return float(max(wanted))


# -- clean: tiles with halos, then noise -------------------------------------------------------------------


def _clean(root: Path, read: dict[str, Any], analysis: dict[str, Any], params: PointcloudParams,
           ctx: Context) -> dict[str, Any]:  # fmt: skip
    folder = root / "clean"
    shutil.rmtree(folder, ignore_errors=True)
    tiles = _tiles(root, read, analysis, params)
    counts = partition(_spill(root, read)(), tiles)
    ctx.progress(0.3)
    (folder / "classes").mkdir(parents=True)
    threshold = _outlier_distances(tiles, folder / "distances", params, ctx)
    origin = tuple(read["tally"]["bounds"]["min"][:2])
    totals = {noise.LOW_NOISE: 0, noise.HIGH_NOISE: 0}
    for index, tile in enumerate(tiles.ids()):
        core, halo = _xyz(tiles.load(tile)), _xyz(tiles.load(tile, "halo"))
        classes = np.asarray(tiles.load(tile).classification).copy()
        flagged = np.zeros(len(core), bool)
        if threshold is not None:
            flagged = np.load(folder / "distances" / f"{tile}.npy") > threshold
        classes[flagged] = noise.noise_classes(core[flagged], np.concatenate([core, halo]))
        if params.elm is not None:
            low = noise.extended_local_minimum(np.concatenate([core, halo]), origin, params.elm.cell,
                                               params.elm.threshold)[: len(core)]  # fmt: skip
            classes[low & ~flagged] = noise.LOW_NOISE
        np.save(folder / "classes" / f"{tile}.npy", classes)
        for kind in totals:
            totals[kind] += int((classes == kind).sum())
        ctx.progress(0.6 + 0.4 * (index + 1) / len(counts))
    return {"tiles": len(counts), "tile_depth": tiles.octree.tile_depth, "halo_m": tiles.halo,
            "outlier_threshold_m": threshold, "low_noise": totals[noise.LOW_NOISE],
            "high_noise": totals[noise.HIGH_NOISE]}  # fmt: skip


def _outlier_distances(tiles: Tiles, folder: Path, params: PointcloudParams, ctx: Context) -> float | None:
    """Each tile's mean neighbour distances (saved per tile: the cloud's would not fit in memory), and
    the outlier threshold from their running sums; None without the outlier test."""
    if params.outlier is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    total = squares = 0.0
    count = 0
    ids = tiles.ids()
    for index, tile in enumerate(ids):
        core, halo = _xyz(tiles.load(tile)), _xyz(tiles.load(tile, "halo"))
        first = noise.neighbour_distances(core, halo, params.outlier.mean_k, _room(tiles, tile, core))
        distances = noise.widened(first, core, params.outlier.mean_k, tiles.gather).mean_distance
        np.save(folder / f"{tile}.npy", distances)
        total, squares, count = (
            total + float(distances.sum()),
            squares + float(distances @ distances),
            count + len(distances),
        )
        ctx.progress(0.3 + 0.3 * (index + 1) / len(ids))
    return noise.outlier_threshold(total, squares, count, params.outlier.multiplier) if count else None


def _room(tiles: Tiles, tile: int, xyz: np.ndarray) -> np.ndarray:
    x0, y0 = tiles.origin(tile)
    size = tiles.tile_size
    inside = np.minimum.reduce([xyz[:, 0] - x0, x0 + size - xyz[:, 0], xyz[:, 1] - y0, y0 + size - xyz[:, 1]])
    return inside + tiles.halo


def _xyz(records: laspy.ScaleAwarePointRecord) -> np.ndarray:
    return np.column_stack([records.x, records.y, records.z])


# -- classify: ground ----------------------------------------------------------------------------------------


def _classify(root: Path, read: dict[str, Any], analysis: dict[str, Any], params: PointcloudParams,
              ctx: Context) -> dict[str, Any]:  # fmt: skip
    folder = root / "classify"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tiles = _tiles(root, read, analysis, params)
    ids = tiles.ids()
    counts = np.zeros(256, np.int64)
    for index, tile in enumerate(ids):
        classes = np.load(root / "clean" / "classes" / f"{tile}.npy")
        if params.ground == "csf":
            is_noise = _is_noise(classes)
            # the halo's noise as its own tile's clean stage found it: noise would pull the cloth down
            halo_noise = _is_noise(
                tiles.looked_up(tile, lambda t: np.load(root / "clean" / "classes" / f"{t}.npy"))
            )
            core, halo = _xyz(tiles.load(tile)), _xyz(tiles.load(tile, "halo"))
            on_ground = np.zeros(len(core), bool)
            on_ground[~is_noise] = ground(core[~is_noise], halo[~halo_noise], params.csf)
            classes = ground_classes(classes, on_ground, is_noise)
        np.save(folder / f"{tile}.npy", classes)
        counts += np.bincount(classes, minlength=256)
        ctx.progress((index + 1) / len(ids))
    return {"ground": params.ground, "classification": {str(c): int(n) for c, n in enumerate(counts) if n}}


def _is_noise(classes: np.ndarray) -> np.ndarray:
    return np.isin(classes, (noise.LOW_NOISE, noise.HIGH_NOISE))


# -- tile: COPC, 3D Tiles, preview -------------------------------------------------------------------------


def _tile(root: Path, read: dict[str, Any], analysis: dict[str, Any], params: PointcloudParams,
          ctx: Context) -> dict[str, Any]:  # fmt: skip
    """The outputs, from the classified tiles (noise left out with `drop_noise`; reprojected with
    `srs_out`, which places the points in an octree of their own, so they are tiled again first)."""
    folder = root / "tile"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tiles = _tiles(root, read, analysis, params)
    epsg = (analysis["srs"] or {}).get("epsg")
    bounds = (np.array(read["tally"]["bounds"]["min"]), np.array(read["tally"]["bounds"]["max"]))
    if params.srs_out is not None and epsg is not None and params.srs_out != epsg:
        tiles, bounds = _reprojected(tiles, root, epsg, params.srs_out, params.drop_noise)
        source, epsg = _plain(tiles), params.srs_out
    else:
        source = _finished(tiles, root, params.drop_noise)
    made: dict[str, Any] = {}
    copc = folder / "cloud.copc.laz"
    view = TopView.over(bounds[0], bounds[1], params.preview_size, analysis["density"]["spacing_m"])
    wkt = _wkt(epsg) if epsg is not None else None
    plain = folder / "for-tiles.las"  # py3dtiles' input (it misreads COPC's chunks on one thread)
    if "tiles" in params.outputs:
        source = _also_written(source, plain, tiles)
    made["copc"] = write_copc(copc, _viewed(source, view, read), octree=tiles.octree, frame=tiles.frame,
                              point_format=tiles.point_format, bounds=bounds, wkt=wkt,
                              spill=folder / "spill")  # fmt: skip
    ctx.progress(0.5)
    if "tiles" in params.outputs:
        cache = ctx.settings.state_dir / "numba-cache" if ctx.settings is not None else root / "numba-cache"
        made["tiles"] = write_tileset(plain, folder / "tiles", epsg, max(1, os.cpu_count() or 1), cache)
        plain.unlink()
    ctx.progress(0.9)
    if "preview" in params.outputs:
        made["preview"] = view.save(
            folder / "preview.png", coloured="red" in tiles.point_format.dimension_names
        )
    if "copc" not in params.outputs:
        copc.unlink()
        made.pop("copc")
    return made


def _finished(tiles: Tiles, root: Path, drop_noise: bool) -> Iterator[laspy.ScaleAwarePointRecord]:
    """Each tile's points with their final classes (noise left out with `drop_noise`)."""
    for tile in tiles.ids():
        records = tiles.load(tile)
        classes = np.load(root / "classify" / f"{tile}.npy")
        records.classification = classes
        yield records[~_is_noise(classes)] if drop_noise else records


def _also_written(
    chunks: Iterator[laspy.ScaleAwarePointRecord], path: Path, tiles: Tiles
) -> Iterator[laspy.ScaleAwarePointRecord]:
    """`chunks` passed on, each also appended to the plain LAS file `path`."""
    header = laspy.LasHeader(point_format=tiles.point_format, version="1.4")
    header.scales, header.offsets = np.array(tiles.frame.scale), np.array(tiles.frame.offset)
    with laspy.open(path, mode="w", header=header) as out:
        for records in chunks:
            out.write_points(records)
            yield records


def _plain(tiles: Tiles) -> Iterator[laspy.ScaleAwarePointRecord]:
    for tile in tiles.ids():
        yield tiles.load(tile)


def _viewed(
    chunks: Iterator[laspy.ScaleAwarePointRecord], view: TopView, read: dict[str, Any]
) -> Iterator[laspy.ScaleAwarePointRecord]:
    """`chunks` passed on, each also drawn into the preview (noise not: a bird would stand on a roof)."""
    for records in chunks:
        keep = ~_is_noise(np.asarray(records.classification))
        colour = "red" in records.point_format.dimension_names
        rgb = np.column_stack([records.red, records.green, records.blue])[keep] if colour else None
        view.add(_xyz(records)[keep], rgb)
        yield records


def _reprojected(tiles: Tiles, root: Path, epsg: int, srs_out: int, drop_noise: bool) -> tuple[Tiles, tuple]:
    """The finished points in `srs_out`, tiled again in an octree around their new bounds, in a frame
    of the same resolution (a millimetre stays a millimetre; degrees get 10⁻⁸, about a millimetre)."""
    from pyproj import CRS, Transformer

    to_out = Transformer.from_crs(CRS.from_epsg(epsg), CRS.from_epsg(srs_out), always_xy=True)
    target = CRS.from_epsg(srs_out)
    moved_folder = root / "tile" / "reprojected"
    low, high, count = np.full(3, np.inf), np.full(3, -np.inf), 0
    for records in _finished(tiles, root, drop_noise):  # first the new bounds
        xyz = np.column_stack(to_out.transform(records.x, records.y, records.z))
        low, high, count = (
            np.minimum(low, xyz.min(axis=0)),
            np.maximum(high, xyz.max(axis=0)),
            count + len(xyz),
        )
    step = 1e-8 if target.is_geographic else min(tiles.frame.scale)
    frame = Frame((step, step, min(tiles.frame.scale)), tuple(float(v) for v in np.floor(low)))  # type: ignore[arg-type]
    octree = Octree.around(low, high, count, step)
    moved = Tiles(moved_folder, octree, 0.0, frame, tiles.point_format)

    def chunks() -> Iterator[laspy.ScaleAwarePointRecord]:
        for records in _finished(tiles, root, drop_noise):
            xyz = np.column_stack(to_out.transform(records.x, records.y, records.z))
            out = moved.records(records.array.copy())
            out.X, out.Y, out.Z = frame.to_ints(xyz).T
            yield out

    partition(chunks(), moved)
    return moved, (low, high)


def _wkt(epsg: int) -> str:
    from pyproj import CRS

    return str(CRS.from_epsg(epsg).to_wkt())


# -- export ------------------------------------------------------------------------------------------------

CONTENT_TYPES = {".laz": "application/vnd.laszip+copc", ".png": "image/png", ".json": "application/json",
                 ".pnts": "application/octet-stream", ".glb": "model/gltf-binary"}  # fmt: skip


def _export(ctx: Context, root: Path, manifest: dict[str, Any]) -> None:
    folder = root / "tile"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name.startswith(("spill/", "reprojected/")):
            continue
        ctx.put_output(name, path, CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    ctx.put_output("manifest.json", path, "application/json")
    ctx.result = manifest
