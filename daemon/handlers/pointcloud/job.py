"""The pointcloud job's stages: download → read → analyze → clean → classify → tile → export.

Each stage works in its own folder and is recorded and checkpointed when it finishes (handlers/
stages.py), so an attempt after a spot notice resumes at the first unfinished one; clean, classify and
tile also resume at their last finished tile (resume.py). The points stream through every stage: `read`
turns the upload into canonical records on disk once, `clean` cuts them into the octree's tiles with
halos (tiling.py) and every later stage works a tile at a time, spread over worker processes
(tilework.py), so memory follows a tile's size, never the cloud's. Neither the records nor the tiles are
checkpointed (each the cloud's size again): a resumed attempt reads the upload again and cuts them anew.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import laspy
import numpy as np

from ...errors import InputError
from ..base import Context
from ..stages import StageRecords, Stages, restore_checkpoint
from . import clean as noise
from .cleanwork import Distances, Ground, Noise
from .copc import CopcFile
from .describe import Sample, describe
from .octree import TILE_POINTS, Octree
from .params import PointcloudParams
from .preview import TopView, colour_shift
from .resume import LEDGER, resumable_pass
from .source import CloudFile, Frame, open_cloud, read_chunks
from .stats import Tally
from .tiles3d import Placement, TilesetIndex
from .tilework import Assembly, TileResult, TileWork, workers
from .tiling import Tiles, partition

log = logging.getLogger(__name__)

STAGES = ("download", "read", "analyze", "clean", "classify", "tile", "export")
SPILL_CHUNK = 1_000_000
MIN_HALO_M = 5.0


def run(ctx: Context) -> None:
    params: PointcloudParams = ctx.params
    root = ctx.workdir
    records = StageRecords(root, STAGES)
    restore_checkpoint(ctx, records)

    stage = Stages(ctx, records).run

    with ctx.stage("download"):  # the upload is needed only until the read stage has finished
        upload = None if records.finished("read") else ctx.fetch_inputs()[0]
    # (only the sample is checkpointed: the records, ~36 B a point, are read again from the upload)
    read = stage(
        "read", lambda: _read(upload, root / "read", params, ctx), folders=(root / "read" / "sample.npy",)
    )
    analysis = stage("analyze", lambda: describe(read, _sample(root, read, params, ctx), params), folders=())
    cleaned = stage(
        "clean",
        lambda: _clean(root, read, analysis, params, ctx, records),
        folders=(root / "clean" / "classes",),
    )  # (the tiles are cut again on a resume)
    classified = stage("classify", lambda: _classify(root, read, analysis, params, ctx, records))
    tiled = stage("tile", lambda: _tile(root, read, analysis, params, ctx, records))
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
    tally, sample = Tally(), Sample(cloud.declared_points)
    with (folder / "points.bin").open("wb") as out:
        for chunk in read_chunks(cloud):
            tally.add(chunk)
            sample.add(chunk)
            out.write(chunk.array.tobytes())
            ctx.progress(min(1.0, tally.points / max(cloud.declared_points, 1)))
    tally.check(upload.name)
    np.save(folder / "sample.npy", sample.points())
    return {"source": _source_facts(cloud, upload), "tally": tally.report(),
            "frame": {"scale": list(cloud.frame.scale), "offset": list(cloud.frame.offset)},
            "point_format": cloud.record_format.id, "srs_wkt": cloud.srs_wkt,
            "tile_points": ctx.settings.pointcloud_tile_points if ctx.settings else TILE_POINTS}  # fmt: skip


def _records(root: Path, read: dict[str, Any], params: PointcloudParams, ctx: Context) -> None:
    """The read stage's records on disk. An attempt that restored the read stage from a checkpoint has
    only its record and sample: the records are the cloud's size again, and reading the upload (about
    a third of their size as LAZ) takes less than a checkpoint of them would take to upload and fetch.
    The upload read again must be the one read before."""
    if (root / "read" / "points.bin").exists():
        return
    log.info("the read stage's records are not in its checkpoint: reading the upload again")
    upload = ctx.fetch_inputs()[0]
    again = _read(upload, root / "read", params, ctx)
    if again["tally"] != read["tally"]:
        raise InputError(
            f"{upload.name}: the upload read again is not the one the earlier attempt read "
            f"({again['tally']['points']:,} points, {read['tally']['points']:,} before)",
            code="input_changed",
        )


def _source_facts(cloud: CloudFile, upload: Path) -> dict[str, Any]:
    return {"name": upload.name, "bytes": upload.stat().st_size, "format": cloud.format,
            "las_version": cloud.las_version, "point_format": cloud.point_format,
            "dimensions": list(cloud.dimensions), "declared_points": cloud.declared_points}  # fmt: skip


def _frame(read: dict[str, Any]) -> Frame:
    scale, offset = read["frame"]["scale"], read["frame"]["offset"]
    return Frame((scale[0], scale[1], scale[2]), (offset[0], offset[1], offset[2]))


def _spill(root: Path, read: dict[str, Any]) -> Callable[[], Iterator[laspy.ScaleAwarePointRecord]]:
    """The read stage's records, chunk by chunk. Read, not memory-mapped: a map's pages, once touched,
    count in the process's resident memory until the kernel needs them back, the whole cloud's size."""
    point_format, frame = laspy.PointFormat(read["point_format"]), _frame(read)
    dtype = point_format.dtype()

    def chunks() -> Iterator[laspy.ScaleAwarePointRecord]:
        with (root / "read" / "points.bin").open("rb") as source:
            while len(array := np.fromfile(source, dtype, count=SPILL_CHUNK)):
                yield laspy.ScaleAwarePointRecord(array, point_format, np.array(frame.scale),
                                                  np.array(frame.offset))  # fmt: skip

    return chunks


def _sample(root: Path, read: dict[str, Any], params: PointcloudParams, ctx: Context) -> np.ndarray:
    """The read stage's sample of the points, for the spacing (made again from the records when an
    earlier worker version's read stage left none)."""
    path = root / "read" / "sample.npy"
    if path.exists():
        return np.load(path)
    _records(root, read, params, ctx)
    again = Sample(read["tally"]["points"])
    for chunk in _spill(root, read)():
        again.add(chunk)
    return again.points()


def _tiles(root: Path, read: dict[str, Any], analysis: dict[str, Any], params: PointcloudParams) -> Tiles:
    tally = read["tally"]
    frame = _frame(read)
    # (the tile size the read stage recorded: every attempt cuts the same tiles, whatever its settings)
    low, high, per_tile = tally["bounds"]["min"], tally["bounds"]["max"], read.get("tile_points", TILE_POINTS)
    octree = Octree.around(np.array(low), np.array(high), tally["points"], max(frame.scale), per_tile)
    return Tiles(root / "clean" / "tiles", octree, _halo(analysis, params), frame,
                 laspy.PointFormat(read["point_format"]))  # fmt: skip


def _halo(analysis: dict[str, Any], params: PointcloudParams) -> float:
    """Wide enough for an ELM column and twenty points' spacing of neighbours, and for the cloth to
    drape over a tile's edge (several cloth cells); none when nothing looks at neighbours."""
    spacing = analysis["density"]["spacing_m"] or 1.0
    wanted = [0.0]
    if params.outlier is not None:
        wanted += [MIN_HALO_M, 20 * spacing]
    if params.elm is not None:
        wanted += [MIN_HALO_M, params.elm.cell]
    if params.ground == "csf":
        wanted += [MIN_HALO_M, 10 * params.csf.cloth_resolution]
    return float(max(wanted))


# -- clean: tiles with halos, then noise -------------------------------------------------------------------


def _processes(ctx: Context) -> int:
    """The worker processes to spread tiles over (POINTCLOUD_PROCESSES; 0: one per core)."""
    configured = ctx.settings.pointcloud_processes if ctx.settings is not None else 0
    return configured or workers()


def _partitioned(
    root: Path, read: dict[str, Any], analysis: dict[str, Any], params: PointcloudParams, ctx: Context
) -> Tiles:
    """The cloud's tiles on disk: cut by the clean stage, and cut again (the same: the cut is
    deterministic) by a stage of an attempt that restored a checkpoint, which leaves them out."""
    tiles = _tiles(root, read, analysis, params)
    complete = tiles.folder / "complete"
    if not complete.exists():
        _records(root, read, params, ctx)
        shutil.rmtree(tiles.folder, ignore_errors=True)
        partition(_spill(root, read)(), tiles)
        complete.touch()
    return tiles


def _clean(root: Path, read: dict[str, Any], analysis: dict[str, Any], params: PointcloudParams,
           ctx: Context, records: StageRecords) -> dict[str, Any]:  # fmt: skip
    """Two passes over the tiles, each resumable at its last finished tile (resume.py): every point's
    neighbour distances (the cloud's outlier threshold comes from all of them), then the classes."""
    folder = root / "clean"
    tiles = _partitioned(root, read, analysis, params, ctx)
    ids, processes = tiles.ids(), _processes(ctx)
    distances, classes = folder / "distances", folder / "classes"
    keep = [distances, classes]
    for path in keep:
        path.mkdir(parents=True, exist_ok=True)
    ctx.progress(0.2)
    threshold = None
    if params.outlier is not None:
        measured = Distances(tiles, distances, params.outlier.mean_k)
        total, squares, count = resumable_pass(
            ctx, records, "clean", distances, ids, measured, processes, keep=keep,
            progress=lambda share: ctx.progress(0.2 + 0.4 * share),
        )  # fmt: skip
        threshold = noise.outlier_threshold(total, squares, int(count), params.outlier.multiplier)
    origin = (read["tally"]["bounds"]["min"][0], read["tally"]["bounds"]["min"][1])
    found = Noise(tiles, distances if threshold is not None else None, threshold, params.elm, origin, classes)
    low, high = resumable_pass(ctx, records, "clean", classes, ids, found, processes, keep=keep,
                               progress=lambda s: ctx.progress(0.6 + 0.4 * s))  # fmt: skip
    return {"tiles": len(ids), "tile_depth": tiles.octree.tile_depth, "halo_m": tiles.halo,
            "outlier_threshold_m": threshold, "low_noise": int(low), "high_noise": int(high)}  # fmt: skip


# -- classify: ground ----------------------------------------------------------------------------------------


def _classify(root: Path, read: dict[str, Any], analysis: dict[str, Any], params: PointcloudParams,
              ctx: Context, records: StageRecords) -> dict[str, Any]:  # fmt: skip
    folder = root / "classify"
    folder.mkdir(parents=True, exist_ok=True)
    tiles = _partitioned(root, read, analysis, params, ctx)
    work = Ground(tiles, root / "clean" / "classes", params.csf if params.ground == "csf" else None, folder)
    counts = resumable_pass(ctx, records, "classify", folder, tiles.ids(), work, _processes(ctx),
                            keep=[folder], progress=ctx.progress)  # fmt: skip
    return {"ground": params.ground, "classification": {str(c): int(n) for c, n in enumerate(counts) if n}}


# -- tile: COPC, 3D Tiles, preview -------------------------------------------------------------------------


def _tile(root: Path, read: dict[str, Any], analysis: dict[str, Any], params: PointcloudParams,
          ctx: Context, records: StageRecords) -> dict[str, Any]:  # fmt: skip
    """The outputs, from the classified tiles (noise left out with `drop_noise`; reprojected with
    `srs_out`, which places the points in an octree of their own, so they are tiled again first). The
    tiles are placed in nodes, compressed and drawn in parallel (tilework.py); this process writes the
    COPC and the tileset's index from what each returns, and keeps each tile's result in `done/` so an
    attempt that resumes the stage replays the finished tiles instead of working them again."""
    folder = root / "tile"
    _tidy(folder)
    tiles = _partitioned(root, read, analysis, params, ctx)
    classes: Path | None = root / "classify"
    srs = analysis["srs"] or {}
    wkt, epsg = srs.get("wkt"), srs.get("epsg")
    bounds = (np.array(read["tally"]["bounds"]["min"]), np.array(read["tally"]["bounds"]["max"]))
    if params.srs_out is not None and wkt is None:
        raise InputError(
            f"srs_out EPSG:{params.srs_out} asks for a reprojection, but the cloud's coordinate system is "
            "unknown: its file names none; give srs_in",
            code="unknown_srs",
        )
    if params.srs_out is not None and wkt is not None and params.srs_out != epsg:
        tiles, bounds = _reprojected(tiles, root, wkt, params.srs_out, params.drop_noise, read)
        classes, wkt = None, _wkt(params.srs_out)
    shift = colour_shift(analysis.get("colour"))
    view = TopView.over(bounds[0], bounds[1], params.preview_size, analysis["density"]["spacing_m"])
    placement = Placement(wkt, tiles.octree.center, tiles.frame.scale, tiles.frame.offset, shift)
    work = TileWork(tiles, classes, params.drop_noise, folder / "spill",
                    folder / "tiles" if "tiles" in params.outputs else None, placement,
                    view.raster if "preview" in params.outputs else None, shift)  # fmt: skip
    done = folder / "done"
    keep = [done, work.spill] + ([work.pnts] if work.pnts is not None else [])
    for path in keep:
        path.mkdir(parents=True, exist_ok=True)
    copc = CopcFile(folder / "cloud.copc.laz", octree=tiles.octree, frame=tiles.frame,
                    point_format=tiles.point_format, bounds=bounds,
                    wkt=wkt)  # fmt: skip
    assembly = Assembly(copc, TilesetIndex(folder / "tiles", tiles.octree, placement), view)

    def take(tile: int, result: TileResult) -> list[int]:
        result.save(done / f"{tile}.npz")
        assembly.add(result)
        return [result.points]

    try:
        resumable_pass(ctx, records, "tile", done, tiles.ids(), work, _processes(ctx), keep=keep,
                       progress=lambda share: ctx.progress(0.9 * share), take=take,
                       replay=lambda tile: assembly.add(TileResult.load(done / f"{tile}.npz")))  # fmt: skip
        assembly.finish(work)
    finally:
        made: dict[str, Any] = {"copc": copc.close()}
    if work.pnts is not None:
        made["tiles"] = assembly.index.write()
    if "preview" in params.outputs:
        made["preview"] = view.save(
            folder / "preview.png", coloured="red" in tiles.point_format.dimension_names
        )
    if "copc" not in params.outputs:
        (folder / "cloud.copc.laz").unlink()
        made.pop("copc")
    for scratch in ("spill", "reprojected", "done"):  # the stage's checkpoint is its outputs
        shutil.rmtree(folder / scratch, ignore_errors=True)
    return made


def _tidy(folder: Path) -> None:
    """The tile stage's folder made ready: kept as it is where an earlier attempt's checkpoint left
    finished tiles (their results in `done/` with its ledger, their `.pnts` and shares of the shallow
    nodes), less the outputs made whole at the end; emptied otherwise."""
    if not (folder / "done" / LEDGER).exists():
        shutil.rmtree(folder, ignore_errors=True)
    for made in ("cloud.copc.laz", "preview.png", "tiles/tileset.json", "reprojected"):
        path = folder / made
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)


def _finished(tiles: Tiles, root: Path, drop_noise: bool) -> Iterator[laspy.ScaleAwarePointRecord]:
    """Each tile's points with their final classes (noise left out with `drop_noise`)."""
    work = TileWork(tiles, root / "classify", drop_noise, root, None, None, None, 0)
    for tile in tiles.ids():
        yield work.finished(tile)


def _reprojected(
    tiles: Tiles, root: Path, wkt: str, srs_out: int, drop_noise: bool, read: dict[str, Any]
) -> tuple[Tiles, tuple]:
    """The finished points in `srs_out`, tiled again in an octree around their new bounds, in a frame
    of the same resolution (a millimetre stays a millimetre; degrees get 10⁻⁸, about a millimetre)."""
    from pyproj import CRS, Transformer

    to_out = Transformer.from_crs(CRS.from_wkt(wkt), CRS.from_epsg(srs_out), always_xy=True)
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
    octree = Octree.around(low, high, count, step, read.get("tile_points", TILE_POINTS))
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
                 ".pnts": "application/octet-stream"}  # fmt: skip


def _export(ctx: Context, root: Path, manifest: dict[str, Any]) -> None:
    folder = root / "tile"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        ctx.put_output(name, path, CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    ctx.put_output("manifest.json", path, "application/json")
    ctx.result = manifest
