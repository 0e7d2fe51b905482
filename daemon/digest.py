"""SHA-256 of files and streams, the one way the daemon computes it (outputs, checkpoints, inputs).

Read in 1 MiB chunks: memory stays flat for multi-GB uploads and videos.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

CHUNK_BYTES = 1024 * 1024
"""Read size for hashing and streaming a file."""


class Sha256Sum:
    """A running SHA-256 and byte count, fed chunk by chunk (while copying, uploading, downloading)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as src:
        while chunk := src.read(CHUNK_BYTES):
            yield chunk


def file_sha256(path: Path) -> tuple[int, str]:
    """(size in bytes, hex SHA-256) of the file at `path`."""
    total = Sha256Sum()
    for chunk in file_chunks(path):
        total.update(chunk)
    return total.size, total.hexdigest()
