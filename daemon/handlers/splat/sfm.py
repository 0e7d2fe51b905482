"""Structure from motion: photos → camera poses and an undistorted PINHOLE sparse model (COLMAP).

One stage function, `run_sfm`, with typed options (sfm_options.py) and result and no knowledge of
Redis, S3 or Supabase. Its sub-steps, each a pycolmap 4.2.1 call: extract SIFT features → match
(exhaustive, sequential, or sequential plus retrieved loop-closure pairs for video: sfm_matching.py,
pairs.py) → incremental mapping (the largest model wins; photos that share a camera by size alone
checked to be one camera: sfm_camera_check.py; principal points refined last: sfm_refine.py) →
undistort to PINHOLE.

Every pycolmap call runs in a helper thread while the calling thread waits in short slices
(sfm_supervisor.py), so a stop, a time limit or the daemon's signals cancel it within a fraction of
a second.

Idempotent: the files this stage owns under `workdir` (workspace.SfmLayout) are removed and rebuilt
on every run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...errors import JobError
from .sfm_camera_check import check_size_only_cameras
from .sfm_cameras import camera_groups, image_sizes, import_cameras, size_only
from .sfm_matching import match_features
from .sfm_options import SfmOptions, sift_scale
from .sfm_refine import refine_principal_points
from .sfm_supervisor import STEP_SPANS, Supervisor
from .workspace import SfmLayout

log = logging.getLogger(__name__)

MIN_KEYPOINTS = 30
"""Fewest SIFT keypoints for an image to count as having features: COLMAP registers an image only
with at least 30 inlier correspondences (`abs_pose_min_num_inliers`)."""

EXTRACT_CHUNKS = 20
"""Feature extraction runs in up to this many calls so that its progress moves (each call costs
~70 ms of set-up, so chunks hold at least `MIN_CHUNK` images)."""

MIN_CHUNK = 8


@dataclass(frozen=True)
class SfmResult:
    model_dir: Path
    """Undistorted sparse model (cameras/images/points3D .bin), every camera PINHOLE."""
    images_dir: Path
    """Undistorted images, named as in the model: `{index:05d}_{input name}`, index = position in
    `image_paths` (so names are unique and sort in input order)."""
    registered: int
    total: int
    points: int
    mean_reprojection_error: float
    timings: dict[str, float]
    """Wall seconds per sub-step: extract, match, map, undistort."""
    cameras: int = 1
    """Cameras (sets of intrinsics) the images were grouped into (sfm_cameras.py), or that the
    registered ones have after the camera check split a group."""
    camera_check: str = ""
    """Whether photos grouped by size alone proved to share intrinsics (sfm_camera_check.py):
    "consistent", "split" or "skipped"."""
    matcher: str = ""
    """The matcher that chose the pairs (sfm_matching.py's choose_matcher for "auto")."""
    principal_point: str = ""
    """Whether mapping's last bundle adjustment freed the principal points: "refined", or why not
    (sfm_refine.py's `Refinement.outcome`)."""
    sift: dict[str, Any] = field(default_factory=dict)
    """The scale SIFT ran at: `first_octave`, `max_image_size` (sfm_options.sift_scale) and, when the
    capture was extracted again with the doubled octave, `fallback` (why) and `kept` (which pass)."""
    pycolmap: dict[str, Any] = field(default_factory=dict)
    """Which pycolmap build ran: its package (`pycolmap`, or `pycolmap-cuda12` on GPU hosts: see
    scripts/select_pycolmap.sh), version, and whether it has CUDA (SIFT on the GPU)."""


FALL_BACK_CODES = ("sfm_no_features", "sfm_failed")
"""Failures of the undoubled octave that the doubled one may cure (small or soft photos)."""


@dataclass(frozen=True)
class _Pass:
    """What every pass over extract → match → map works on."""

    pycolmap: Any
    layout: SfmLayout
    names: list[str]
    groups: list[list[str]]
    size_only: set[str]
    sup: Supervisor


@dataclass(frozen=True)
class _Mapped:
    """A pass's kept model (in memory) and how it was made."""

    model: Any
    camera_check: str
    principal_point: str
    matcher: str
    sift: dict[str, Any]


def run_sfm(
    image_paths: Sequence[Path],
    workdir: Path,
    options: SfmOptions | None = None,
    *,
    devices: Sequence[str | None] | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SfmResult:
    """Recover camera poses and a sparse point cloud from `image_paths`, in their given order.

    `devices[i]` is image i's device key (EXIF make/model/focal, or None), for grouping the images into
    cameras (`options.cameras`, sfm_cameras.py); None: no image had one.

    `progress(fraction)` and `should_stop()` are only ever called from the calling thread, at least
    every `POLL_S` seconds (sfm_supervisor.py) while pycolmap works. `should_stop` may raise the
    caller's own interrupt (e.g. the daemon's `JobCanceled`): the running pycolmap call is cancelled
    and joined and the exception propagates unchanged. If it merely returns True,
    `JobError(code="sfm_stopped")` is raised. Likewise an exception from `progress` (or a signal
    handler) cancels the running call.

    Raises `JobError` with code sfm_no_features, sfm_failed, sfm_too_few_registered, sfm_timeout or
    sfm_stopped (none retryable: the same photos fail the same way). Anything else is a bug.
    """
    import pycolmap  # heavy: only in the job's process, never in the worker parent

    options = options or SfmOptions()
    if len(image_paths) < 2:
        raise JobError(
            f"structure from motion needs at least 2 images, got {len(image_paths)}", code="sfm_failed"
        )
    layout = SfmLayout(workdir)
    layout.reset()
    names = _stage_images(image_paths, layout.images)
    devices = devices or [None] * len(names)
    sizes = image_sizes(layout.images, names)
    groups = camera_groups(names, sizes, devices, options.cameras)
    supervisor = Supervisor(options.time_limit_s, progress, should_stop)
    pass_ = _Pass(
        pycolmap, layout, names, groups,
        size_only(groups, dict(zip(names, devices, strict=True)), options.cameras), supervisor,
    )  # fmt: skip
    mapped = _sparse_model(pass_, options, _median([max(size) for size in sizes]))
    best = mapped.model
    best.write(_mkdir(layout.best))
    _check_registered(best.num_reg_images(), len(names), options)
    model_dir = _undistort(pycolmap, layout, options, supervisor)
    result = SfmResult(
        model_dir=model_dir,
        images_dir=layout.undistorted_images,
        registered=best.num_reg_images(),
        total=len(names),
        points=best.num_points3D(),
        mean_reprojection_error=float(best.compute_mean_reprojection_error()),
        timings=dict(supervisor.timings),
        cameras=best.num_cameras() if mapped.camera_check == "split" else len(groups),
        camera_check=mapped.camera_check,
        matcher=mapped.matcher,
        principal_point=mapped.principal_point,
        sift=mapped.sift,
        pycolmap=pycolmap_build(pycolmap),
    )
    log.info(
        "sfm: registered %d/%d with %d camera(s), %d points, reprojection %.2f px, %s",
        result.registered,
        result.total,
        result.cameras,
        result.points,
        result.mean_reprojection_error,
        " ".join(f"{k}={v:.1f}s" for k, v in result.timings.items()),
    )
    return result


def pycolmap_build(pycolmap: Any) -> dict[str, Any]:
    """The pycolmap distribution that is installed (both wheels import as `pycolmap`)."""
    from importlib import metadata

    package = "pycolmap"
    for name in ("pycolmap-cuda12", "pycolmap"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        package = name
        break
    return {"package": package, "version": pycolmap.__version__, "cuda": bool(pycolmap.has_cuda)}


def _stage_images(image_paths: Sequence[Path], folder: Path) -> list[str]:
    """Link the inputs into one folder under names that sort in input order: COLMAP needs one image
    root, and its sequential matcher pairs images by name order."""
    names = []
    for index, path in enumerate(image_paths):
        name = f"{index:05d}_{Path(path).name}"
        (folder / name).symlink_to(Path(path).resolve())
        names.append(name)
    return names


# -- sub-steps ----------------------------------------------------------------------------------


def _extract(
    pycolmap: Any,
    layout: SfmLayout,
    names: list[str],
    groups: list[list[str]],
    options: SfmOptions,
    sup: Supervisor,
) -> None:
    pycolmap.Database.open(layout.database).close()
    # Images (and so cameras) are registered first, one camera per group; extraction in chunks
    # afterwards keeps them (it only adds features to images the database has).
    sup.run("extract", lambda token: import_cameras(pycolmap, layout.database, layout.images, groups))
    extraction = pycolmap.FeatureExtractionOptions(
        max_image_size=options.max_image_size,
        num_threads=options.num_threads,
        sift=pycolmap.SiftExtractionOptions(
            max_num_features=options.max_num_features, first_octave=options.first_octave
        ),
    )
    size = max(MIN_CHUNK, math.ceil(len(names) / EXTRACT_CHUNKS))
    chunks = [names[i : i + size] for i in range(0, len(names), size)]
    lo, hi = STEP_SPANS["extract"]
    for index, chunk in enumerate(chunks):

        def extract(token: Any, chunk: list[str] = chunk) -> None:
            pycolmap.extract_features(
                layout.database,
                layout.images,
                image_names=chunk,
                extraction_options=extraction,
                device=pycolmap.Device.auto,
                cancellation_token=token,
            )

        span = (lo + (hi - lo) * index / len(chunks), lo + (hi - lo) * (index + 1) / len(chunks))
        sup.run("extract", extract, span=span)
    _check_features(pycolmap, layout, len(names))


def _check_features(pycolmap: Any, layout: SfmLayout, total: int) -> None:
    """Fail early, with a reason a customer can act on, when fewer than two images have features
    (unreadable images never reach the database, so they count as featureless)."""
    with pycolmap.Database.open(layout.database) as db:
        counts = [db.num_keypoints_for_image(image.image_id) for image in db.read_all_images()]
    usable = sum(count >= MIN_KEYPOINTS for count in counts)
    log.info("sfm: features in %d/%d images (median %d)", usable, total, _median(counts))
    if usable < 2:
        raise JobError(
            f"only {usable} of {total} images have enough detail for features "
            "(flat, blurred, dark or unreadable photos?)",
            code="sfm_no_features",
        )


def _sparse_model(pass_: _Pass, options: SfmOptions, long_side: int) -> _Mapped:
    """Extract, match and map at the scale `sift_scale` picks; when that is the undoubled octave of
    the auto rule and the capture did not register in full, once more with the doubled octave, and
    the model that registered more is kept (the second on a tie: the doubled octave is the more
    accurate on sharp photos)."""
    octave, sift_px = sift_scale(long_side, options)
    can_fall_back = options.first_octave is None and octave == 0
    first: _Mapped | None = None
    try:
        done = _mapped(pass_, replace(options, first_octave=octave, max_image_size=sift_px))
    except JobError as exc:
        if not can_fall_back or exc.code not in FALL_BACK_CODES:
            raise
        why = exc.code
    else:
        registered = done.model.num_reg_images()
        if not can_fall_back or registered == len(pass_.names):
            return done
        first, why = done, f"registered {registered}/{len(pass_.names)}"
    log.info("sfm: %s with SIFT's first octave 0; extracting again at -1 (doubled)", why)
    pass_.layout.reset_features()
    pass_.sup.rebase()
    try:
        second = _mapped(pass_, replace(options, first_octave=-1))
    except JobError as exc:
        if first is None or exc.code not in FALL_BACK_CODES:
            raise
        return replace(first, sift={**first.sift, "fallback": why, "kept": "first"})
    keep_first = first is not None and first.model.num_reg_images() > second.model.num_reg_images()
    kept = first if first is not None and keep_first else second
    return replace(kept, sift={**kept.sift, "fallback": why, "kept": "first" if keep_first else "second"})


def _mapped(pass_: _Pass, options: SfmOptions) -> _Mapped:
    """One pass of extract → match → map at `options`' SIFT scale."""
    _extract(pass_.pycolmap, pass_.layout, pass_.names, pass_.groups, options, pass_.sup)
    matcher = match_features(pass_.pycolmap, pass_.layout, pass_.names, options, pass_.sup)
    model, check, refinement = _map(pass_, options)
    sift = {"first_octave": options.first_octave, "max_image_size": options.max_image_size}
    return _Mapped(model, check, refinement, matcher, sift)


def _map(pass_: _Pass, options: SfmOptions) -> tuple[Any, str, str]:
    """The largest model, its cameras checked (sfm_camera_check.py) and its principal points refined
    when they can be (sfm_refine.py); and the two outcomes."""
    pycolmap, layout, sup = pass_.pycolmap, pass_.layout, pass_.sup
    mapping = pycolmap.IncrementalPipelineOptions(
        num_threads=options.num_threads,
        ba_global_frames_ratio=options.ba_global_ratio,
        ba_global_points_ratio=options.ba_global_ratio,
    )
    registered = [0]

    def next_image() -> None:  # runs in the helper thread, under the GIL: keep it trivial
        registered[0] += 1

    models = sup.run(
        "map",
        lambda token: pycolmap.incremental_mapping(
            layout.database,
            layout.images,
            layout.sparse,
            options=mapping,
            next_image_callback=next_image,
            cancellation_token=token,
        ),
        span=STEP_SPANS["map"],
        # The initial pair registers two images before the first callback.
        done_fraction=lambda: min(1.0, (registered[0] + 2) / len(pass_.names)),
    )
    if not models:
        raise JobError(
            "no 3D model could be built: the photos share too few matching features "
            "(they need overlapping views of a textured, static scene)",
            code="sfm_failed",
        )
    best = max(models.values(), key=lambda model: model.num_reg_images())
    best, check = check_size_only_cameras(pycolmap, best, pass_.size_only, sup)
    best, refinement = refine_principal_points(pycolmap, best, options, sup)
    return best, check.outcome, refinement.outcome


def _check_registered(registered: int, total: int, options: SfmOptions) -> None:
    by_ratio = math.ceil(options.min_registered_ratio * total)
    if registered < by_ratio:
        raise JobError(
            f"registered {registered} of {total} images (need ≥ {options.min_registered_ratio:.0%})",
            code="sfm_too_few_registered",
        )
    if registered < options.min_registered:
        raise JobError(
            f"registered {registered} of {total} images (need ≥ {options.min_registered})",
            code="sfm_too_few_registered",
        )


def _undistort(pycolmap: Any, layout: SfmLayout, options: SfmOptions, sup: Supervisor) -> Path:
    sup.run(
        "undistort",
        lambda token: pycolmap.undistort_images(
            layout.undistorted,
            layout.best,
            layout.images,
            output_type="COLMAP",
            num_threads=options.num_threads,
            cancellation_token=token,
        ),
        span=STEP_SPANS["undistort"],
    )
    model_dir = layout.undistorted_model
    models = {camera.model_name for camera in pycolmap.Reconstruction(model_dir).cameras.values()}
    if models != {"PINHOLE"}:  # the trainer's rasteriser handles pinhole cameras only
        raise RuntimeError(f"undistorted model has cameras {sorted(models)}, expected PINHOLE")
    return model_dir


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2] if values else 0
