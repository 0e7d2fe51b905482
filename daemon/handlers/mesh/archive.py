"""A customer's ZIP (a `.gltf` with its buffers and textures, an OBJ with its MTL) unpacked safely.

Nothing in the archive is trusted: names are confined to the destination (no absolute paths, no `..`,
no symbolic links: "zip slip"), and sizes are counted as the bytes come out, not read from the
headers, which a zip bomb fills with small numbers: extraction stops at the total cap or when a member
inflates beyond `max_ratio` times its compressed size.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ...errors import InputError

PIECE = 1 << 20
"""Bytes decompressed at a time: the caps are checked after every piece."""

RATIO_FLOOR = 1 << 20
"""Members are judged by their ratio only past this many bytes: tiny text files compress 1000×."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 10_000
    max_total_bytes: int = 2 << 30
    """Bytes the archive may unpack to, all members together."""
    max_ratio: float = 200.0
    """Most a member may inflate (uncompressed / compressed); real textures and buffers stay far
    below, a zip bomb's members reach 1000× and more."""


def extract_zip(archive: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Path]:
    """Unpack `archive` under `dest` (created); return the files written, in archive order."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > limits.max_members:
                raise _too_large(archive, f"{len(members)} entries (at most {limits.max_members})")
            dest.mkdir(parents=True, exist_ok=True)
            written: list[Path] = []
            total = 0
            for info in members:
                target = _target(archive, dest, info)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                total = _extract_member(archive, zf, info, target, total, limits)
                written.append(target)
            return written
    except zipfile.BadZipFile as exc:
        what = f"{archive.name}: not a readable ZIP archive ({exc})"
        raise InputError(what, code="corrupt_archive") from None


def _target(archive: Path, dest: Path, info: zipfile.ZipInfo) -> Path:
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    entry = f"{archive.name}: entry {info.filename!r}"
    if name.startswith("/") or not parts or ".." in parts or ":" in parts[0]:
        raise InputError(f"{entry} points outside the archive", code="unsafe_archive")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InputError(f"{entry} is a symbolic link", code="unsafe_archive")
    if info.flag_bits & 0x1:
        raise InputError(f"{entry} is encrypted", code="unsupported_format")
    return dest.joinpath(*parts)


def _extract_member(
    archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, total: int, limits: ArchiveLimits
) -> int:
    """Copy one member out, counting; return the running total."""
    target.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with zf.open(info) as src, target.open("wb") as out:
        while piece := src.read(PIECE):
            size += len(piece)
            total += len(piece)
            if total > limits.max_total_bytes:
                raise _too_large(archive, f"unpacks to more than {limits.max_total_bytes} bytes")
            if size > RATIO_FLOOR and size > limits.max_ratio * max(info.compress_size, 1):
                raise _too_large(
                    archive, f"{info.filename!r} inflates more than {limits.max_ratio:.0f}× (a zip bomb?)"
                )
            out.write(piece)
    return total


def _too_large(archive: Path, what: str) -> InputError:
    return InputError(f"{archive.name}: {what}", code="archive_too_large")
