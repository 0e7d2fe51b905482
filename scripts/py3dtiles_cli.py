"""`python scripts/py3dtiles_cli.py convert …`: py3dtiles' own command line, with laspy reading LAZ on one
thread: how the point-cloud benchmark runs `py3dtiles convert` alone, the replaced worker's tiling step
that our job is measured against (our job writes its tileset itself: tiles3d.py).

Why: laspy decodes LAZ with lazrs on rayon's thread pool by default. py3dtiles reads a few points in its
parent process (to guess the colour scale), which starts that pool, then forks its workers; a forked
child inherits the pool's bookkeeping without its threads, and the first read spanning two LAZ chunks
waits for them forever (rayon does not support fork: rayon-rs/rayon#708). The workers read in parallel
processes anyway, so one thread each loses nothing.
"""

from __future__ import annotations

import sys
from typing import Any

import laspy

_open = laspy.open


def _open_single_threaded(source: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    if mode == "r" and "laz_backend" not in kwargs and not args:
        kwargs["laz_backend"] = laspy.LazBackend.Lazrs
    return _open(source, mode, *args, **kwargs)


def main() -> None:
    laspy.open = _open_single_threaded
    from py3dtiles.command_line import main as py3dtiles_main

    py3dtiles_main()
    sys.exit(0)


if __name__ == "__main__":
    main()
