"""After mapping: do the photos grouped into one camera by their size alone really share intrinsics?

Photos without EXIF are grouped by size (sfm_cameras.py), which is right for one phone's photos and
wrong for two devices, or two lenses of one phone, that write the same size. Mapping does not fail
then: it fits one focal length between the two and bends the structure to match (measured: 20 + 20
rendered views at 60° and 45° fields of view, 277 and 386 px, mapped as one camera at 350 px with a
mean reprojection error of 0.72 px, every view registered).

The check: a copy of the model in which every such photo has a camera of its own whose focal length
alone is free, bundle adjusted on a sample of its points, against the same sample adjusted with the
shared camera. Only the focal length: with its distortion free too, a photo's camera also absorbs a
principal point off centre, and one lens was split in the tests. If the photos share intrinsics the
freedom buys little; if not, the error falls and the focal lengths part:

| model (a sample of ~1,000 points)       | check  | error, own / shared | focal lengths p10-p90    |
| two devices (rendered, 40 photos; ×3)   | 0.7 s  | 0.43-0.54           | 294-406 to 316-432 px    |
| one lens 3% off centre (rendered, 16)   | 0.1 s  | 0.80-0.81           | 270-294 px (×1.09)       |
| instant-ngp fox (50 photos, 1 phone)    | 0.86 s | 0.99                | 687-701 px               |
| Strecha castle-P30 (30, 1 camera)       | 0.41 s | 0.98                | 852-862 px               |
| Strecha Herz-Jesu-P25 (25, 1 camera)    | 0.55 s | 1.00                | 857-862 px               |

The error alone does not separate the off-centre lens from two devices well enough, the focal lengths
do: a group is split when both the error falls below `SPLIT_GAIN` and the focal lengths spread over
more than `SPLIT_SPREAD` (p90 / p10). Then the whole model is bundle adjusted with a camera per photo
and replaces the mapped one (registrations, tracks and poses kept; the focal lengths found their own).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from .sfm_refine import bundle_adjust
from .sfm_supervisor import Supervisor

log = logging.getLogger(__name__)

SPLIT_GAIN = 0.8
"""Split when a camera per photo brings the sample's mean reprojection error below this share of
the shared camera's: one camera's photos measured 0.99-1.02, two devices' 0.35."""

SPLIT_SPREAD = 1.2
"""... and when the photos' own focal lengths spread over more than this (p90 / p10): two devices
measured 1.36-1.38, one lens 1.01-1.09. Two devices closer than that are fitted well enough by one."""

SAMPLE_POINTS = 1000
"""The check adjusts about this many 3D points (every k-th): a whole-model adjustment with a camera
per photo took 3.4 s on the fox's 8,600 points, for the same verdict."""

CHECK_ITERATIONS = 20
"""Solver iterations for the sampled check (the verdict was the same at 20 as at COLMAP's 100)."""


@dataclass(frozen=True)
class CameraCheck:
    outcome: str
    """"consistent", "split" (the size-only groups got a camera per photo), or "skipped" (no group
    of two or more photos sharing a camera by size alone). Recorded in the manifest."""
    error_ratio: float = 1.0
    """The sample's mean reprojection error with a camera per photo over that with shared cameras."""
    focal_range_px: tuple[float, float] = (0.0, 0.0)
    """10th and 90th percentile of the per-photo focal lengths the check found."""


def check_size_only_cameras(
    pycolmap: Any, model: Any, size_only: Collection[str], sup: Supervisor
) -> tuple[Any, CameraCheck]:
    """The model to keep, and the verdict. `size_only` names the photos (as in the model) that share
    a camera by their size alone; `model` is never changed."""
    shared = {
        image.camera_id for image in model.images.values() if image.has_pose and image.name in size_only
    }
    counts = [
        sum(1 for image in model.images.values() if image.has_pose and image.camera_id == camera_id)
        for camera_id in shared
    ]
    if not counts or max(counts) < 2:
        return model, CameraCheck("skipped")
    stride = max(1, model.num_points3D() // SAMPLE_POINTS)
    # A focal length per photo, nothing else (see above), against the shared camera as mapping fits it
    together = _own_cameras(pycolmap, model, (), stride)
    _adjust(pycolmap, together, sup, iterations=CHECK_ITERATIONS)
    sample = _own_cameras(pycolmap, model, size_only, stride)
    _adjust(pycolmap, sample, sup, iterations=CHECK_ITERATIONS, extra_params=False)
    before = together.compute_mean_reprojection_error()
    ratio = sample.compute_mean_reprojection_error() / before if before > 0 else 1.0
    focals = np.array(
        [sample.cameras[i.camera_id].focal_length for i in sample.images.values() if i.name in size_only]
    )
    spread = (float(np.percentile(focals, 10)), float(np.percentile(focals, 90)))
    if ratio >= SPLIT_GAIN or spread[1] <= SPLIT_SPREAD * spread[0]:
        log.info(
            "sfm: photos of one size are one camera (focal lengths %.0f-%.0f px, error x%.2f each)",
            *spread, ratio,
        )  # fmt: skip
        return model, CameraCheck("consistent", ratio, spread)
    log.warning(
        "sfm: photos of one size are not one camera (focal lengths %.0f-%.0f px, error x%.2f with a camera "
        "each): giving each its own",
        *spread, ratio,
    )  # fmt: skip
    split = _own_cameras(pycolmap, model, size_only, stride=1)
    _adjust(pycolmap, split, sup)
    return split, CameraCheck("split", ratio, spread)


def _own_cameras(pycolmap: Any, model: Any, size_only: Collection[str], stride: int) -> Any:
    """A copy of the registered part of `model` in which each photo of `size_only` has a camera of
    its own (a copy of its shared one); other cameras are kept as they are. Every `stride`-th point."""
    copy = pycolmap.Reconstruction()
    kept: dict[int, int] = {}  # shared camera id → its id in the copy
    next_id = max(model.cameras) + 1
    for image in sorted(model.images.values(), key=lambda im: im.image_id):
        if not image.has_pose:
            continue
        camera = model.cameras[image.camera_id]
        if image.name in size_only:
            camera_id, next_id = next_id, next_id + 1
        elif image.camera_id in kept:
            camera_id = kept[image.camera_id]
        else:
            camera_id = kept[image.camera_id] = image.camera_id
        if not copy.exists_camera(camera_id):
            copy.add_camera_with_trivial_rig(
                pycolmap.Camera(
                    model=camera.model, width=camera.width, height=camera.height, params=camera.params,
                    camera_id=camera_id,
                )
            )  # fmt: skip
        points = pycolmap.Point2DList([pycolmap.Point2D(point.xy) for point in image.points2D])
        copy.add_image_with_trivial_frame(
            pycolmap.Image(name=image.name, points2D=points, camera_id=camera_id, image_id=image.image_id),
            image.cam_from_world(),
        )
    for index, point in enumerate(model.points3D.values()):
        if index % stride == 0:
            copy.add_point3D(point.xyz, pycolmap.Track(point.track.elements), point.color)
    return copy


def _adjust(
    pycolmap: Any, model: Any, sup: Supervisor, iterations: int | None = None, extra_params: bool = True
) -> None:
    options = pycolmap.BundleAdjustmentOptions(print_summary=False, refine_extra_params=extra_params)
    if iterations is not None:
        options.ceres.solver_options.max_num_iterations = iterations
    bundle_adjust(pycolmap, model, options, sup)
