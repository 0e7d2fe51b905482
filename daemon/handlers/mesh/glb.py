"""The GLB container checked before any tool parses it: header, declared length and chunk table.

A GLB is a 12-byte header (magic `glTF`, version 2, total length) and chunks (length, type, data),
the first JSON, then at most one BIN, each 4-byte aligned (glTF 2.0 §4.4). A header that lies about
its length, or a chunk that runs past the end, is refused here with what is wrong, so the parsers
downstream only ever see a container whose sizes add up.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ...errors import InputError

MAGIC = b"glTF"
JSON_CHUNK = 0x4E4F534A
BIN_CHUNK = 0x004E4942
HEADER = struct.Struct("<4sII")
CHUNK = struct.Struct("<II")


@dataclass(frozen=True)
class GlbLayout:
    json_bytes: int
    bin_bytes: int | None
    """None: no BIN chunk (all data in data: URIs, or no buffers)."""


def check_glb(path: Path) -> GlbLayout:
    """The chunk table of the GLB at `path`, or InputError(code="corrupt_model") saying what is wrong."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(HEADER.size)
        if len(head) < HEADER.size:
            raise _corrupt(path, f"{size} bytes, shorter than a GLB header")
        magic, version, length = HEADER.unpack(head)
        if magic != MAGIC:
            raise _corrupt(path, "no glTF magic at the start")
        if version != 2:
            raise _corrupt(path, f"GLB version {version}, only glTF 2.0 is read", code="unsupported_format")
        if length != size:
            raise _corrupt(path, f"the header declares {length} bytes, the file has {size}")
        return _chunks(path, f, size)


def _chunks(path: Path, f: BinaryIO, size: int) -> GlbLayout:
    offset, json_bytes, bin_bytes = HEADER.size, None, None
    while offset < size:
        raw = f.read(CHUNK.size)
        if len(raw) < CHUNK.size:
            raise _corrupt(path, f"a chunk header cut short at byte {offset}")
        length, kind = CHUNK.unpack(raw)
        end = offset + CHUNK.size + length
        if end > size:
            raise _corrupt(path, f"a chunk at byte {offset} declares {length} bytes, past the end ({size})")
        if length % 4:
            raise _corrupt(path, f"a chunk at byte {offset} has length {length}, not a multiple of 4")
        if json_bytes is None:
            if kind != JSON_CHUNK:
                raise _corrupt(path, "the first chunk is not JSON")
            json_bytes = length
        elif kind == BIN_CHUNK:
            if bin_bytes is not None:
                raise _corrupt(path, "more than one BIN chunk")
            bin_bytes = length
        elif kind == JSON_CHUNK:
            raise _corrupt(path, "more than one JSON chunk")
        # chunks of other types are skipped, as the specification asks of readers
        f.seek(end)
        offset = end
    if json_bytes is None:
        raise _corrupt(path, "no JSON chunk")
    return GlbLayout(json_bytes, bin_bytes)


def extensions_used(path: Path, layout: GlbLayout) -> set[str]:
    """The glTF extensions the GLB's JSON chunk declares it uses (its layout checked first)."""
    with path.open("rb") as f:
        f.seek(HEADER.size + CHUNK.size)
        raw = f.read(layout.json_bytes)
    try:
        used = json.loads(raw).get("extensionsUsed") or []
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise _corrupt(path, "its JSON chunk is not a glTF document") from None
    return {name for name in used if isinstance(name, str)}


def _corrupt(path: Path, what: str, *, code: str = "corrupt_model") -> InputError:
    return InputError(f"{path.name}: not a valid GLB: {what}", code=code)
