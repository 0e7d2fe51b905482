"""Ground (class 2) by the cloth simulation filter (Zhang et al. 2016, the `cloth-simulation-filter`
package): a cloth dropped on the cloud turned upside down settles on the ground's underside; points
within `class_threshold` of it are ground.

The cloth is simulated per tile over the tile and its halo, so it drapes over the tile's edges as it
would over the whole cloud, and only the tile's own points take its answer. (The cloth is not a
neighbourhood filter: unlike clean.py's tests it is not exact at a border, only as good as a halo of
many cloth cells makes it; the tests measure the agreement.) Noise is left out of the simulation: a
low-noise point would pull the cloth down.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import numpy as np

from .params import CsfParams

GROUND, UNCLASSIFIED = 2, 1


def ground(core: np.ndarray, halo: np.ndarray, params: CsfParams) -> np.ndarray:
    """Which of the `core` points (N × 3) are ground, the cloth simulated over `core` and `halo`."""
    import CSF

    if len(core) == 0:
        return np.zeros(0, bool)
    everything = np.concatenate([core, halo]) if len(halo) else core
    cloth = CSF.CSF()
    cloth.params.cloth_resolution = params.cloth_resolution
    cloth.params.rigidness = params.rigidness
    cloth.params.class_threshold = params.class_threshold
    cloth.params.time_step = params.time_step
    cloth.params.interations = params.iterations  # (sic: the package's spelling)
    cloth.params.bSloopSmooth = params.slope_smooth
    # (z up, as the package's Python binding expects; centred, for float precision in its grid)
    cloth.setPointCloud(np.ascontiguousarray(everything - everything.mean(axis=0)))
    found, other = CSF.VecInt(), CSF.VecInt()
    with _quiet_stdout():  # it reports each phase on the C library's stdout
        cloth.do_filtering(found, other, False)
    on_ground = np.zeros(len(everything), bool)
    on_ground[np.asarray(found, dtype=np.int64)] = True
    return on_ground[: len(core)]


def ground_classes(classification: np.ndarray, is_ground: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The classes after the ground test: ground 2; a point the upload called ground that is not now
    unclassified (1); noise and every other class as they were."""
    classes = classification.copy()
    classes[is_ground & ~noise] = GROUND
    classes[(classification == GROUND) & ~is_ground & ~noise] = UNCLASSIFIED
    return classes


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """File descriptor 1 sent to /dev/null for the block (what a C library prints does not pass
    through sys.stdout, and the worker's stdout is its log)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
