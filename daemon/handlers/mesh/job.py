"""The mesh job's stages: download → read → analyze → optimize → lods → thumbnail → export.

Each stage works in its own folder under the work folder and is recorded and checkpointed when it
finishes (handlers/stages.py), so an attempt after a spot notice resumes at the first unfinished one.
The heavy lifting is glTF Transform's (tools.py → daemon/js/mesh.mjs) and trimesh's (geometry.py);
this module decides what runs on which file.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from ...errors import InputError, JobError
from ..base import Context
from ..stages import StageRecords, Stages, restore_checkpoint
from .geometry import Surface, geometry_report, load_mesh, surface_error
from .params import MeshParams
from .read import read_model
from .tools import run_tool, run_tools, tools_beside

STAGES = ("download", "read", "analyze", "optimize", "lods", "thumbnail", "export")
PREVIEW_MIN_TRIANGLES = 200
PREVIEW_TEXTURE_SIZE = 256
THUMBNAIL_TRIANGLES = 300_000
THUMBNAIL_ERROR_PX = 0.5
GLB = "model/gltf-binary"


def run(ctx: Context) -> None:
    params: MeshParams = ctx.params
    root = ctx.workdir
    records = StageRecords(root, STAGES)
    restore_checkpoint(ctx, records)

    stage = Stages(ctx, records).run

    with ctx.stage("download"):  # the upload is needed only until the read stage has finished
        upload = None if records.finished("read") else ctx.fetch_inputs()[0]
    read = stage("read", lambda: _read(upload, root / "read"))
    source = root / "read" / "source.glb"
    analysis = stage("analyze", lambda: _analyze(source, read["name"], params), folders=())
    optimized = stage("optimize", lambda: _optimize(source, root / "optimize", params))
    lods = stage("lods", lambda: _lods(root, params, ctx))
    chromium = ctx.settings.chromium_path if ctx.settings is not None else None
    thumbnail = stage("thumbnail", lambda: _thumbnail(root, params, optimized, lods, chromium))
    with ctx.stage("export"):
        manifest = {
            "job_id": ctx.job_id, "kind": "mesh", "attempt": ctx.attempt, "source": read,
            "analysis": analysis, "optimized": optimized, "lods": lods, "thumbnail": thumbnail,
            "timings_s": dict(ctx.timings),
        }  # fmt: skip
        _export(ctx, root, manifest)


def _read(upload: Path | None, folder: Path) -> dict[str, Any]:
    if upload is None:  # (read's record exists whenever the download was skipped)
        raise RuntimeError("the read stage runs only after a download")
    model = read_model(upload, folder)
    return {"name": upload.name, "format": model.source_format, "zipped": model.zipped,
            "warnings": model.warnings, "bytes": upload.stat().st_size}  # fmt: skip


def _analyze(source: Path, name: str, params: MeshParams) -> dict[str, Any]:
    # glTF Transform's counts and the validator's report (image headers only: nothing is decoded
    # before the pixel cap is checked) in Node while trimesh measures the geometry here
    with tools_beside([("analyze", {"path": str(source)}), ("validate", {"path": str(source)})]) as tools:
        try:
            geometry = geometry_report(load_mesh(source), name)
        except Exception:
            tools()  # the tools' verdict on a model they cannot read comes first
            raise
        counts, report = tools()
    for texture in counts["textures"]:
        pixels = (texture["width"] or 0) * (texture["height"] or 0)
        if pixels > params.max_texture_pixels:
            raise InputError(
                f"{name}: a texture of {texture['width']}×{texture['height']} pixels, over the "
                f"{params.max_texture_pixels} pixel cap (max_texture_pixels)",
                code="texture_too_large",
            )
    return {**counts, **geometry, "validator": report}


def _optimize(source: Path, folder: Path, params: MeshParams) -> dict[str, Any]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cleaned = folder / "clean.glb"
    clean = {"path": str(source), "out": str(cleaned), "max_texture_size": params.max_texture_size,
             "texture_format": params.texture_format, "join": params.join_parts}  # fmt: skip
    model = folder / "model.glb"
    _, counts, report = run_tools([("clean", clean), _compress(cleaned, model, params), _validate(model)])
    return {**counts, "bytes": model.stat().st_size, "compression": params.compression,
            "validator": _verdict(report)}  # fmt: skip


def _compress(path: Path, out: Path, params: MeshParams) -> tuple[str, dict[str, Any]]:
    """The compress step for `path` → `out` (it reports what the written file holds)."""
    args = {"path": str(path), "out": str(out), "method": params.compression, "level": params.draco_level}
    return ("compress", args)


def _validate(path: Path) -> tuple[str, dict[str, Any]]:
    """The validator's step for an output, checked when it is written (`_verdict`) and before export."""
    return ("validate", {"path": str(path), "max_messages": 3})


def _verdict(report: dict[str, Any]) -> dict[str, Any]:
    """What a stage's record keeps of the validator's report on an output it wrote."""
    return {key: report[key] for key in ("errors", "warnings", "messages")}


def lod_triangles(target: float, vertices: int, triangles: int) -> int:
    """Triangles a level keeps: a share of the triangles (target ≤ 1), or a vertex count turned into
    triangles at the model's own ratio (a closed mesh has about twice as many triangles as vertices)."""
    wanted = target * triangles if target <= 1 else target * triangles / max(vertices, 1)
    return min(triangles, max(1, math.floor(wanted)))


def lod_texture_size(index: int, name: str, params: MeshParams) -> int | None:
    """The texture cap of a level: the finest keeps the optimised model's, each next one half the
    one before (not below PREVIEW_TEXTURE_SIZE), the preview PREVIEW_TEXTURE_SIZE; None: unchanged."""
    if name == "preview":
        return min(PREVIEW_TEXTURE_SIZE, params.max_texture_size)
    if index == 0:
        return None
    return max(PREVIEW_TEXTURE_SIZE, params.max_texture_size >> index)


def _lods(root: Path, params: MeshParams, ctx: Context) -> dict[str, Any]:
    """The chain simplified in one batch, each level from the one before (a 1M-triangle scan is
    simplified once, not once per level), each one's error measured against the cleaned model (its
    tree built once), then all compressed in one batch: what the files hold is what the manifest says."""
    folder = root / "lods"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cleaned = root / "optimize" / "clean.glb"
    reference = Surface(load_mesh(cleaned))
    triangles, vertices = len(reference.mesh.faces), len(reference.mesh.vertices)
    preview = max(PREVIEW_MIN_TRIANGLES, math.floor(params.preview_ratio * triangles))
    levels = [
        (f"model_lod{i}", lod_triangles(t, vertices, triangles)) for i, t in enumerate(params.lod_targets)
    ]
    levels.append(("preview", min(triangles, preview)))
    sources = [cleaned, *(folder / f"{name}.raw.glb" for name, _ in levels[:-1])]
    run_tools([
        ("lod", {"path": str(source), "out": str(folder / f"{name}.raw.glb"), "triangles": keep,
                 "max_texture_size": lod_texture_size(index, name, params)})
        for index, ((name, keep), source) in enumerate(zip(levels, sources, strict=True))
    ])  # fmt: skip
    ctx.progress(0.4)
    # the levels compressed and validated in Node while their errors are measured here
    steps = [_compress(folder / f"{name}.raw.glb", folder / f"{name}.glb", params) for name, _ in levels]
    with tools_beside([*steps, *(_validate(folder / f"{name}.glb") for name, _ in levels)]) as tools:
        errors = []
        for index, (name, _) in enumerate(levels):
            errors.append(surface_error(reference, load_mesh(folder / f"{name}.raw.glb")))
            ctx.progress(0.4 + 0.5 * (index + 1) / len(levels))
        results = tools()
    counts, reports = results[: len(levels)], results[len(levels) :]
    chain = []
    for (name, keep), error, count, report in zip(levels, errors, counts, reports, strict=True):
        (folder / f"{name}.raw.glb").unlink()
        chain.append({"name": f"{name}.glb", "target_triangles": keep, **count,
                      "bytes": (folder / f"{name}.glb").stat().st_size, "validator": _verdict(report),
                      **{k: round(v, 6) for k, v in error.items()}})  # fmt: skip
    return {"levels": chain, "error_unit": "fraction of the bounding-box diagonal"}


def _thumbnail(
    root: Path, params: MeshParams, optimized: dict[str, Any], lods: dict[str, Any], chromium: str | None
) -> dict[str, Any]:
    """The thumbnail drawn from the lightest file that looks the same at its size (`thumbnail_file`)."""
    folder = root / "thumbnail"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    drawn_from = thumbnail_file(root, params, optimized, lods)
    args = {"path": str(drawn_from), "png": str(folder / "thumbnail.png"),
            "webp": str(folder / "thumbnail.webp"), "size": params.thumbnail_size,
            "chromium": chromium}  # fmt: skip
    drawn = run_tool("thumbnail", args)
    return {"size": drawn["size"], "triangles_drawn": drawn["triangles"], "drawn_from": drawn_from.name}


def thumbnail_file(root: Path, params: MeshParams, optimized: dict[str, Any], lods: dict[str, Any]) -> Path:
    """The finest file of at most THUMBNAIL_TRIANGLES triangles (at a few hundred pixels a 1M-triangle
    scan and its 200k level are the same picture, and SwiftShader rasterises a fifth of it), then any
    next level that still looks the same at the thumbnail's size: its measured error under
    THUMBNAIL_ERROR_PX (the framed model's diagonal spans about the thumbnail's side) and its
    textures at least the thumbnail's size (the browser decodes and uploads a fraction of the pixels)."""
    files = [(root / "optimize" / "model.glb", optimized["triangles"], params.max_texture_size, 0.0)]
    for index, level in enumerate(lods["levels"]):
        name = level["name"].removesuffix(".glb")
        cap = lod_texture_size(index, name, params) or params.max_texture_size
        files.append((root / "lods" / level["name"], level["triangles"], cap, level["hausdorff"]))
    start = next(
        (i for i, (_, count, _, _) in enumerate(files) if count <= THUMBNAIL_TRIANGLES), len(files) - 1
    )
    chosen = start
    for index in range(start + 1, len(files)):
        _, _, cap, error = files[index]
        if error * params.thumbnail_size > THUMBNAIL_ERROR_PX or cap < params.thumbnail_size:
            break
        chosen = index
    return files[chosen][0]


def _export(ctx: Context, root: Path, manifest: dict[str, Any]) -> None:
    outputs = {"model.glb": (root / "optimize" / "model.glb", manifest["optimized"])}
    for level in manifest["lods"]["levels"]:
        outputs[level["name"]] = (root / "lods" / level["name"], level)
    # Nothing leaves that a viewer would reject: the validator ran as each output was written (a
    # record from a worker of an earlier version may not say, and then it runs here)
    unchecked = [name for name, (_, record) in outputs.items() if "validator" not in record]
    reports = run_tools([_validate(outputs[name][0]) for name in unchecked])
    for name, report in zip(unchecked, reports, strict=True):
        outputs[name][1]["validator"] = _verdict(report)
    for name, (_, record) in outputs.items():
        if record["validator"]["errors"]:
            found = record["validator"]["messages"]
            raise JobError(f"{name} failed glTF validation: {found}", code="invalid_output")
    for name, (path, _) in outputs.items():
        ctx.put_output(name, path, GLB)
    ctx.put_output("thumbnail.png", root / "thumbnail" / "thumbnail.png", "image/png")
    ctx.put_output("thumbnail.webp", root / "thumbnail" / "thumbnail.webp", "image/webp")
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    ctx.put_output("manifest.json", path, "application/json")
    ctx.result = manifest
