"""The read stage: whatever model a customer sent → one self-contained GLB the later stages work on.

The format is told by the file's bytes (handlers/sniff.py), never its name. A GLB is checked as a
container (glb.py) and kept; a ZIP is unpacked safely (archive.py) and must hold one model; a `.gltf`
is packed by glTF Transform once every file it names is confined to its folder (a `http://` or
`file://` URI, or a path out of the folder, is refused and never fetched); OBJ (with its MTL and
textures, same confinement), PLY and STL are converted by trimesh; FBX is made a `.gltf` by Assimp
(fbx.py). A texture an OBJ or FBX names but the archive lacks is a warning, not a failure: the
material keeps its colour.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ...errors import InputError
from ..sniff import describe_content, sniff_model
from .archive import ArchiveLimits, extract_zip
from .fbx import fbx_to_gltf
from .glb import check_glb, extensions_used
from .tools import ToolLimits, run_tool

SNIFF_BYTES = 4096
MODEL_SUFFIXES = {".glb": "glb", ".gltf": "gltf", ".obj": "obj", ".ply": "ply", ".stl": "stl", ".fbx": "fbx"}
GLTF_JSON_MAX_BYTES = 64 << 20
ENCODED = frozenset({"KHR_draco_mesh_compression", "EXT_meshopt_compression", "KHR_mesh_quantization"})
"""Geometry encodings an upload may carry; decoded once by the read stage."""
READABLE = "GLB, glTF (zipped with its files), OBJ (zipped with its MTL and textures), FBX, PLY or STL"


@dataclass(frozen=True)
class ReadModel:
    glb: Path
    source_format: str
    """What the customer sent: glb, gltf, obj, fbx, ply or stl (inside a zip or not)."""
    zipped: bool = False
    warnings: list[str] = field(default_factory=list)


def read_model(
    path: Path, workdir: Path, *, archive: ArchiveLimits | None = None, tools: ToolLimits | None = None
) -> ReadModel:
    """`path` → `workdir/source.glb` (workdir is emptied first: the stage may run again)."""
    archive, tools = archive or ArchiveLimits(), tools or ToolLimits()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    fmt = _sniff(path)
    zipped = fmt == "zip"
    if zipped:
        path, fmt = _model_in(path, extract_zip(path, workdir / "unpacked", archive))
    out = workdir / "source.glb"
    warnings: list[str] = []
    if fmt == "fbx":  # Assimp makes it a .gltf with web textures, packed below like any .gltf
        path, warnings = fbx_to_gltf(path, workdir / "fbx", workdir / "unpacked" if zipped else None, tools)
    layout = None  # the GLB's chunk table, for the glTF formats
    if fmt == "glb":
        layout = check_glb(path)
        shutil.copyfile(path, out)
    elif fmt in ("gltf", "fbx"):
        _confine_gltf(path)
        run_tool("pack", {"path": str(path), "out": str(out)}, tools)
        layout = check_glb(out)
    elif fmt in ("obj", "ply", "stl"):
        warnings = _confine_obj(path) if fmt == "obj" else []
        textured = fmt == "obj" or (fmt == "ply" and _ply_texture(path, warnings))
        _convert(path, fmt, out, textured=textured)
    else:
        what = f"{path.name}: {fmt.upper()} is not read here: send {READABLE}"
        raise InputError(what, code="unsupported_format")
    if layout is not None and ENCODED & extensions_used(out, layout):
        # Draco, meshopt or quantized geometry, decoded once here: every later stage, and trimesh
        # (which reads neither Draco nor normalized integer positions), then sees plain floats
        decoded = workdir / "decoded.glb"
        run_tool("compress", {"path": str(out), "out": str(decoded), "method": "none"}, tools)
        decoded.replace(out)
    return ReadModel(out, fmt, zipped, warnings)


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    fmt = sniff_model(head, path.stat().st_size)
    if fmt is None:
        what = f"{path.name}: {describe_content(head)}, not a 3D model ({READABLE})"
        raise InputError(what, code="not_a_model")
    return fmt


def _model_in(archive: Path, files: list[Path]) -> tuple[Path, str]:
    """The one model file in an unpacked archive (macOS's resource forks and hidden files aside)."""
    models = [
        f
        for f in files
        if f.suffix.lower() in MODEL_SUFFIXES and "__MACOSX" not in f.parts and not f.name.startswith(".")
    ]
    if len(models) != 1:
        names = ", ".join(sorted(f.name for f in models)[:5]) or "none"
        raise InputError(
            f"{archive.name}: an archive must hold exactly one model ({READABLE}); "
            f"found {len(models)}: {names}",
            code="not_a_model" if not models else "ambiguous_input",
        )
    model = models[0]
    fmt = _sniff(model)
    if fmt == "zip":
        raise InputError(f"{archive.name}: an archive inside the archive", code="unsupported_format")
    return model, fmt


def _confined(folder: Path, uri: str, owner: Path) -> Path:
    """The file a relative `uri` names inside `folder`; InputError for anything else."""
    if urlsplit(uri).scheme or uri.startswith("//"):
        raise InputError(
            f"{owner.name} names {uri[:80]!r}: only files inside the upload are read, nothing is fetched",
            code="external_reference",
        )
    target = (folder / unquote(uri)).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise InputError(f"{owner.name} names {uri[:80]!r}, outside its folder", code="external_reference")
    return target


def _confine_gltf(path: Path) -> None:
    if path.stat().st_size > GLTF_JSON_MAX_BYTES:
        what = f"{path.name}: a glTF JSON over {GLTF_JSON_MAX_BYTES >> 20} MiB"
        raise InputError(what, code="model_too_large")
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path.name}: not valid glTF JSON ({exc})", code="corrupt_model") from None
    if not isinstance(document, dict):
        raise InputError(f"{path.name}: not a glTF document", code="corrupt_model")
    for key in ("buffers", "images"):
        for item in document.get(key) or []:
            uri = item.get("uri") if isinstance(item, dict) else None
            if not isinstance(uri, str) or uri.startswith("data:"):
                continue
            if not _confined(path.parent, uri, path).is_file():
                what = f"{path.name} names {uri[:80]!r}, which the upload lacks"
                raise InputError(what, code="corrupt_model")


def _confine_obj(path: Path) -> list[str]:
    """Check the MTL files an OBJ names and the textures they name; the warnings for missing ones."""
    warnings: list[str] = []
    for mtl_name in _statements(path, ("mtllib",)):
        mtl = _confined(path.parent, mtl_name, path)
        if not mtl.is_file():
            warnings.append(f"{path.name} names material library {mtl_name!r}, which the upload lacks")
            continue
        for texture in _statements(mtl, ("map_Kd", "map_Ka", "map_Ks", "map_Bump", "bump", "map_d", "norm")):
            if not _confined(mtl.parent, texture, mtl).is_file():
                warnings.append(f"{mtl.name} names texture {texture!r}, which the upload lacks: left out")
    return warnings


def _ply_texture(path: Path, warnings: list[str]) -> bool:
    """Whether a PLY names a texture (`comment TextureFile`, as MeshLab and photogrammetry tools
    write) that the upload has; a missing one is a warning."""
    with path.open("rb") as f:
        for raw in f:
            line = raw.decode("ascii", errors="replace").split()
            if line[:1] == ["end_header"]:
                return False
            if line[:2] == ["comment", "TextureFile"] and len(line) > 2:
                if _confined(path.parent, line[-1], path).is_file():
                    return True
                warnings.append(f"{path.name} names texture {line[-1]!r}, which the upload lacks: left out")
                return False
    return False


def _statements(path: Path, keywords: tuple[str, ...]) -> list[str]:
    """The file names after `keywords` in an OBJ or MTL (the last word: options such as `-s 1 1 1`
    come before it)."""
    names = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.split()
            if len(words) >= 2 and words[0] in keywords:
                names.append(words[-1])
    return names


def _convert(path: Path, fmt: str, out: Path, *, textured: bool) -> None:
    """trimesh's reading → GLB. Without a texture file, UVs are dropped: trimesh would give them a
    2×2 placeholder image, which the GLB would carry as a texture."""
    import trimesh  # only in the job's process

    try:
        scene: Any = trimesh.load(path, file_type=fmt, force="scene", process=False)
    except Exception as exc:  # trimesh raises anything from its parsers: all mean "unreadable"
        raise InputError(f"{path.name}: not a readable {fmt.upper()} ({exc})", code="corrupt_model") from None
    if not scene.geometry:
        raise InputError(f"{path.name}: the {fmt.upper()} holds no geometry", code="empty_model")
    if not textured:
        for geometry in scene.geometry.values():
            if isinstance(geometry.visual, trimesh.visual.TextureVisuals):
                geometry.visual = trimesh.visual.ColorVisuals(geometry)
    out.write_bytes(scene.export(file_type="glb"))
