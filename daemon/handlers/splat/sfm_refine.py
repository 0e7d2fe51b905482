"""The last step of mapping: one more global bundle adjustment that frees each camera's principal
point, when every camera is seen by enough photos to pin it down.

Why: COLMAP's mapper holds principal points at the image centre (`ba_refine_principal_point` is off:
with few views they are poorly constrained and drift). Real cameras' sit a few pixels off centre,
and a fixed wrong principal point tilts every camera of the model by the same small rotation in its
own frame, which shows as a relative-rotation error growing with the angle between two photos. On
real photos with published poses (`scripts/bench_sfm.py --photos`, 960 px long side, our stage at
its defaults) this step took 0.1-1.1 s and cut the median / p90 pairwise rotation error:

| set (photos)                      | centred pp    | refined pp    | refined pp vs the published K    |
| instant-ngp fox (50, 540×960)     | 0.230 / 0.477 | 0.208 / 0.329 | (not published)                  |
| Strecha fountain-P11 (11)         | 0.241 / 0.461 | 0.092 / 0.170 | (474.2, 313.3) vs (475.2, 314.6) |
| Strecha Herz-Jesu-P25 (25)        | 0.208 / 0.432 | 0.058 / 0.119 | (475.4, 315.4)                   |
| Strecha castle-P30 (30)           | 0.456 / 0.843 | 0.139 / 0.506 | (476.1, 315.6)                   |
| Strecha entry-P10 (10)            | 0.221 / 0.421 | 0.110 / 0.179 | (475.6, 313.4)                   |

(Strecha et al., CVPR 2008, via openMVG's SfM_quality_evaluation: laser-scanned ground truth, one
camera whose principal point is 4.8 and 5.4 px off centre at 960×640.) The same bundle adjustment
with the principal point held changed nothing (±0.001°): the gain is the principal point's.

Its price where the views barely pin the point down: on the rendered ring of the tests (16 views of
320×240 at one height, the true principal point at the centre) it moved 0.75 px up and down, a
direction a level ring cannot tell from the cameras' pitch, and the median rotation error rose from
0.15° to 0.22°. Real captures vary their height and roll, and gained far more than that above.

Guarded, because a free principal point can run away on a weak model: the step is skipped when a
camera has fewer than `SfmOptions.principal_point_min_images` registered photos (a camera per photo
never qualifies), and its result is dropped, the mapped model kept, when a principal point moves
more than `MAX_SHIFT` of its image's size or the mean reprojection error grows.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .sfm_options import SfmOptions
from .sfm_supervisor import Supervisor

log = logging.getLogger(__name__)

Outcome = Literal["refined", "disabled", "few_images", "shifted", "worse"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)

MAX_SHIFT = 0.05
"""Most a principal point may move from where mapping left it, as a share of its image's width
(x) and height (y). Lenses are centred to about 1% (the Strecha camera's 0.5-0.85%, a phone's ~1%);
five times that is a model the free parameters bent, not a camera."""

REPROJECTION_SLACK = 1.01
"""The refined model's mean reprojection error may exceed the mapped one's by at most 1%
(a bundle adjustment minimises a robust loss, not the mean, so it can rise by a hair)."""


@dataclass(frozen=True)
class Refinement:
    outcome: Outcome
    """"refined", or why not: "disabled", "few_images" (a camera with too few photos), "shifted"
    (a principal point ran away), "worse" (reprojection grew). Recorded in the manifest."""
    max_shift_px: float = 0.0
    """Largest principal point move, in pixels (refined or not)."""


def refine_principal_points(
    pycolmap: Any, model: Any, options: SfmOptions, sup: Supervisor
) -> tuple[Any, Refinement]:
    """The model to keep, and what happened. `model` itself is never changed: the refinement runs on
    a copy, returned only when it passes the guard."""
    if options.principal_point_min_images < 1:
        return model, Refinement("disabled")
    seen = Counter(image.camera_id for image in model.images.values() if image.has_pose)
    if min(seen.get(camera_id, 0) for camera_id in model.cameras) < options.principal_point_min_images:
        return model, Refinement("few_images")
    refined = pycolmap.Reconstruction(model)
    ba = pycolmap.BundleAdjustmentOptions(refine_principal_point=True, print_summary=False)
    bundle_adjust(pycolmap, refined, ba, sup)
    shift, shift_px = _largest_shift(model, refined)
    before = model.compute_mean_reprojection_error()
    after = refined.compute_mean_reprojection_error()
    if shift > MAX_SHIFT:
        outcome = Refinement("shifted", shift_px)
    elif after > before * REPROJECTION_SLACK:
        outcome = Refinement("worse", shift_px)
    else:
        outcome = Refinement("refined", shift_px)
    log.info(
        "sfm: principal points %s (moved up to %.1f px; reprojection %.3f -> %.3f px)",
        outcome.outcome, shift_px, before, after,
    )  # fmt: skip
    return (refined if outcome.outcome == "refined" else model), outcome


def bundle_adjust(pycolmap: Any, model: Any, options: Any, sup: Supervisor) -> None:
    """A global bundle adjustment of `model` under `sup` (as part of the map step), COLMAP's log
    level kept: pycolmap 4.2.1's bundle_adjustment leaves it at INFO, whatever it was (measured), and
    the undistorter's line per photo would flood the journal."""
    level = pycolmap.logging.minloglevel
    try:
        sup.run("map", lambda token: pycolmap.bundle_adjustment(model, options, cancellation_token=token))
    finally:
        pycolmap.logging.minloglevel = level


def _largest_shift(model: Any, refined: Any) -> tuple[float, float]:
    """The largest principal point move: as a share of the image size, and in pixels."""
    share = pixels = 0.0
    for camera_id, camera in model.cameras.items():
        moved = refined.cameras[camera_id]
        dx = abs(moved.principal_point_x - camera.principal_point_x)
        dy = abs(moved.principal_point_y - camera.principal_point_y)
        share = max(share, dx / camera.width, dy / camera.height)
        pixels = max(pixels, (dx * dx + dy * dy) ** 0.5)
    return share, pixels
