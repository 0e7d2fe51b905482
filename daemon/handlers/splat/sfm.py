"""Structure from motion: photos → camera poses and an undistorted PINHOLE sparse model (COLMAP).

One stage function, `run_sfm`, with typed options and result and no knowledge of Redis, S3 or
Supabase. Its sub-steps, each a pycolmap 4.2.1 call: extract SIFT features → match (exhaustive,
sequential, or sequential plus retrieved loop-closure pairs for video: pairs.py) → incremental
mapping (the largest model wins) → undistort to PINHOLE.

Every pycolmap call runs in a helper thread while the calling thread waits in short slices. pycolmap
releases the GIL and polls a `CancellationToken` inside its loops, so the calling thread stays free
to report progress, enforce the time limit, poll `should_stop` and take the daemon's signals (a
cancel or preemption raised as an exception in the main thread) within a fraction of a second; on
any of those the running call is cancelled and joined before the exception goes on.

Idempotent: the files this stage owns under `workdir` are removed and rebuilt on every run.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import numpy as np

from ...errors import JobError
from .pairs import Pair, bag_of_words, sequential_loop_pairs, write_pairs

log = logging.getLogger(__name__)

T = TypeVar("T")
Matcher = Literal["auto", "exhaustive", "sequential", "sequential_loop"]
MATCHERS: tuple[Matcher, ...] = get_args(Matcher)

AUTO_EXHAUSTIVE_MAX_IMAGES = 50
"""Largest set the "auto" matcher matches exhaustively. Exhaustive matching costs n(n−1)/2 pairs:
1,225 at 50 images, 4,950 at 100, 19,900 at 200; sequential matching with overlap 10 costs under
10 per image (~450 at 50, ~1,950 at 200). Measured (scripts/bench_sfm.py, 1024 px, 4,096 features)
a pair costs ~0.14 CPU-s to match and verify, so 50 images take ~3 CPU-min (~1.5 min on 2 cores)
and 200 would take ~45 CPU-min: larger sets are assumed to be ordered (video frames, a walk around
the object), where sequential matching registered all 30 bench views with 56% of the pairs."""

VIDEO_MATCHER: Matcher = "sequential_loop"
"""Matcher for video frames (with `single_camera=True`), whatever their count. Measured with
`scripts/bench_sfm.py --video`: a smooth closed orbit around the textured room, default options
(overlap 10, 5 loop candidates), 2 threads on a shared machine (wall seconds swing with load; CPU
seconds are steadier). Every run registered every frame, with the first and last frames in the kept
model. sequential_loop was as accurate as exhaustive at every count (rotation errors within 0.02°
of each other), while sequential alone had 1.6–4× exhaustive's median error (nothing ties the end
of the orbit to its start). sequential_loop cost 0.9–1.15× exhaustive's CPU at 24 frames (its
window and candidates then cover nearly every pair, so no frame-count threshold is needed),
0.7–0.8× at 48, 0.5–0.6× at 96 and 0.4× at 192. Seconds: match and SfM are wall, CPU is all threads.

| size    | frames | matcher         | pairs | match s | SfM s | CPU s | rot median ° | rot max ° |
| 320×240 | 24     | exhaustive      | 276   | 2.0     | 4.8   | 5.1   | 0.054        | 0.101     |
| 320×240 | 24     | sequential      | 185   | 1.6     | 4.3   | 4.3   | 0.141        | 0.289     |
| 320×240 | 24     | sequential_loop | 270   | 3.1     | 5.9   | 5.8   | 0.067        | 0.104     |
| 320×240 | 48     | exhaustive      | 1128  | 4.9     | 10.3  | 17.0  | 0.045        | 0.073     |
| 320×240 | 48     | sequential      | 425   | 2.3     | 7.2   | 11.1  | 0.156        | 0.218     |
| 320×240 | 48     | sequential_loop | 622   | 3.4     | 8.6   | 14.0  | 0.051        | 0.095     |
| 320×240 | 96     | exhaustive      | 4560  | 23.5    | 38.6  | 58.7  | 0.056        | 0.082     |
| 320×240 | 96     | sequential      | 905   | 5.4     | 19.2  | 29.5  | 0.235        | 0.309     |
| 320×240 | 96     | sequential_loop | 1283  | 7.3     | 21.8  | 35.1  | 0.045        | 0.082     |
| 320×240 | 192    | exhaustive      | 18336 | 86.9    | 133.1 | 215.6 | 0.063        | 0.111     |
| 320×240 | 192    | sequential      | 1865  | 12.2    | 52.2  | 76.6  | 0.153        | 0.243     |
| 320×240 | 192    | sequential_loop | 2586  | 22.9    | 71.7  | 87.2  | 0.052        | 0.100     |
| 640×480 | 24     | exhaustive      | 276   | 11.0    | 20.7  | 24.2  | 0.021        | 0.043     |
| 640×480 | 24     | sequential      | 185   | 6.8     | 19.2  | 19.4  | 0.076        | 0.148     |
| 640×480 | 24     | sequential_loop | 240   | 7.3     | 15.9  | 22.1  | 0.021        | 0.050     |
| 640×480 | 48     | exhaustive      | 1128  | 33.0    | 59.0  | 80.4  | 0.016        | 0.027     |
| 640×480 | 48     | sequential      | 425   | 9.6     | 32.2  | 50.9  | 0.025        | 0.054     |
| 640×480 | 48     | sequential_loop | 593   | 12.3    | 35.9  | 59.1  | 0.016        | 0.025     |
| 640×480 | 96     | exhaustive      | 4560  | 88.6    | 160.9 | 279.1 | 0.016        | 0.025     |
| 640×480 | 96     | sequential      | 905   | 22.1    | 87.5  | 124.2 | 0.026        | 0.035     |
| 640×480 | 96     | sequential_loop | 1254  | 44.2    | 126.2 | 140.7 | 0.014        | 0.026     |

A rendered scene is kinder than real footage (no blur, no moving people, no repeated texture), so
all three registered everything here; loop closure and cost, not registration, decided."""

MIN_KEYPOINTS = 30
"""Fewest SIFT keypoints for an image to count as having features: COLMAP registers an image only
with at least 30 inlier correspondences (`abs_pose_min_num_inliers`)."""

POLL_S = 0.2
"""How often the calling thread wakes while pycolmap runs: the latency of a stop or time limit."""

EXTRACT_CHUNKS = 20
"""Feature extraction runs in up to this many calls so that its progress moves (each call costs
~70 ms of set-up, so chunks hold at least `MIN_CHUNK` images)."""

MIN_CHUNK = 8

STEP_SPANS: dict[str, tuple[float, float]] = {
    "extract": (0.0, 0.35),
    "match": (0.35, 0.76),
    "map": (0.76, 0.95),
    "undistort": (0.95, 1.0),
}
"""Share of the stage's progress per sub-step: the CPU-time split of the default options on the
bench's 30 photos (extract 53 s, match 61 s, map 28 s, undistort 8 s)."""


@dataclass(frozen=True)
class SfmOptions:
    """Defaults from scripts/bench_sfm.py (30 photos of 1600×1200, 2 threads; CPU seconds for the
    whole stage): every setting registered 30/30 with rotations within 0.03°, so cost decided.

    | SIFT px | features | matcher    | CPU s | points | rot median ° |
    | 640     | 4096     | exhaustive | 112   | 14.5k  | 0.0042       |
    | 1024    | 4096     | exhaustive | 150   | 18.1k  | 0.0036       |
    | 1600    | 4096     | exhaustive | 185   | 17.8k  | 0.0029       |
    | 1024    | 1024     | exhaustive | 74    | 4.4k   | 0.0147       |
    | 1024    | 8192     | exhaustive | 246   | 28.8k  | 0.0023       |
    | 1024    | 4096     | sequential | 132   | 17.5k  | 0.0070       |
    """

    # Longest image side (px) SIFT sees; larger photos are downscaled for extraction only. 1024:
    # extraction costs 1.8 CPU-s per photo against 2.9 at 1600 for the same registrations and
    # points (SIFT's first octave already doubles the image); 640 loses a fifth of the points.
    max_image_size: int = 1024
    # Most SIFT features kept per image. 4096: 8192 doubles matching and mapping (+95 CPU-s on 30
    # photos) for 60% more points; 1024 is half the cost but gives a quarter of the points and
    # failed on a sparser set (10 views 36° apart at 640×480: too few registered) that 4096 did.
    max_num_features: int = 4096
    # Pairing: "auto" = exhaustive up to AUTO_EXHAUSTIVE_MAX_IMAGES images, sequential above;
    # "sequential_loop" = sequential plus loop-closure pairs (ordered video frames: VIDEO_MATCHER).
    matcher: Matcher = "auto"
    # Sequential matching pairs each image with this many following ones.
    sequential_overlap: int = 10
    # "sequential_loop" adds, per image, this many retrieved loop-closure candidates beyond the window.
    # 5: on the bench's 96-frame orbit (320×240) 1, 2, 3 and 5 all closed the loop (rotations within
    # 0.1°; ~90% of candidates verified) and 5 cost 7% more CPU than 1 (1,283 pairs against 993);
    # the margin is for real footage, where retrieval misses more. COLMAP's own budget is similar
    # (50 retrieved images for every 10th frame).
    loop_candidates: int = 5
    # COLMAP vocabulary-tree file for "sequential_loop" (COLMAP's own loop detection); None = none
    # available (COLMAP downloads one; these hosts have no network), so we retrieve candidates ourselves.
    vocab_tree_path: Path | None = None
    # Fail when the model registers fewer than this share of the input images.
    min_registered_ratio: float = 0.5
    # ... or fewer than this many images, whatever the share.
    min_registered: int = 3
    # Wall-clock limit for the whole stage (seconds).
    time_limit_s: float = 1800.0
    # One camera (intrinsics) shared by all images: right for video frames, whose images carry no
    # EXIF (COLMAP's AUTO mode would then give every frame its own camera).
    single_camera: bool = False
    # CPU threads pycolmap may use in every sub-step.
    num_threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise ValueError(f"unknown matcher {self.matcher!r}: use one of {', '.join(MATCHERS)}")
        if not 0.0 <= self.min_registered_ratio <= 1.0:
            raise ValueError("min_registered_ratio must be within [0, 1]")
        counts = (self.max_image_size, self.max_num_features, self.sequential_overlap, self.num_threads)
        if min(counts) < 1 or self.loop_candidates < 0:
            raise ValueError("sizes, counts and threads must be positive")


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


@dataclass(frozen=True)
class _Layout:
    """The files this stage owns under its workdir: images/ (links to the inputs), database.db
    (features and matches), pairs.txt (the pairs "sequential_loop" matched), sparse/ (every model;
    sparse/best the one kept), undistorted/."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def database(self) -> Path:
        return self.root / "database.db"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs.txt"

    @property
    def sparse(self) -> Path:
        return self.root / "sparse"

    @property
    def undistorted(self) -> Path:
        return self.root / "undistorted"

    def reset(self) -> None:
        for path in (self.images, self.sparse, self.undistorted):
            shutil.rmtree(path, ignore_errors=True)
        self.database.unlink(missing_ok=True)
        self.pairs.unlink(missing_ok=True)
        self.images.mkdir(parents=True)
        self.sparse.mkdir()


def run_sfm(
    image_paths: Sequence[Path],
    workdir: Path,
    options: SfmOptions | None = None,
    *,
    progress: Callable[[float], None] = lambda fraction: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SfmResult:
    """Recover camera poses and a sparse point cloud from `image_paths`, in their given order.

    `progress(fraction)` and `should_stop()` are only ever called from the calling thread, at least
    every `POLL_S` seconds while pycolmap works. `should_stop` may raise the caller's own interrupt
    (e.g. the daemon's `JobCanceled`): the running pycolmap call is cancelled and joined and the
    exception propagates unchanged. If it merely returns True, `JobError(code="sfm_stopped")` is
    raised. Likewise an exception from `progress` (or a signal handler) cancels the running call.

    Raises `JobError` with code sfm_no_features, sfm_failed, sfm_too_few_registered, sfm_timeout or
    sfm_stopped (none retryable: the same photos fail the same way). Anything else is a bug.
    """
    import pycolmap  # heavy: only in the job's process, never in the worker parent

    options = options or SfmOptions()
    if len(image_paths) < 2:
        raise JobError(
            f"structure from motion needs at least 2 images, got {len(image_paths)}", code="sfm_failed"
        )
    layout = _Layout(workdir)
    layout.reset()
    names = _stage_images(image_paths, layout.images)
    supervisor = _Supervisor(options.time_limit_s, progress, should_stop)
    _extract(pycolmap, layout, names, options, supervisor)
    _match(pycolmap, layout, names, options, supervisor)
    best = _map(pycolmap, layout, len(names), options, supervisor)
    _check_registered(best.num_reg_images(), len(names), options)
    model_dir = _undistort(pycolmap, layout, options, supervisor)
    result = SfmResult(
        model_dir=model_dir,
        images_dir=layout.undistorted / "images",
        registered=best.num_reg_images(),
        total=len(names),
        points=best.num_points3D(),
        mean_reprojection_error=float(best.compute_mean_reprojection_error()),
        timings=dict(supervisor.timings),
    )
    log.info(
        "sfm: registered %d/%d, %d points, reprojection %.2f px, %s",
        result.registered,
        result.total,
        result.points,
        result.mean_reprojection_error,
        " ".join(f"{k}={v:.1f}s" for k, v in result.timings.items()),
    )
    return result


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


def _extract(pycolmap: Any, layout: _Layout, names: list[str], options: SfmOptions, sup: _Supervisor) -> None:
    camera_mode = pycolmap.CameraMode.SINGLE if options.single_camera else pycolmap.CameraMode.AUTO
    pycolmap.Database.open(layout.database).close()
    # Images (and so cameras) are registered in one call first: extracting in chunks afterwards
    # keeps one shared camera in SINGLE mode and AUTO's grouping across chunk boundaries.
    sup.run(
        "extract", lambda token: pycolmap.import_images(layout.database, layout.images, camera_mode, names)
    )
    extraction = pycolmap.FeatureExtractionOptions(
        max_image_size=options.max_image_size,
        num_threads=options.num_threads,
        sift=pycolmap.SiftExtractionOptions(max_num_features=options.max_num_features),
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
                camera_mode=camera_mode,
                extraction_options=extraction,
                device=pycolmap.Device.auto,
                cancellation_token=token,
            )

        span = (lo + (hi - lo) * index / len(chunks), lo + (hi - lo) * (index + 1) / len(chunks))
        sup.run("extract", extract, span=span)
    _check_features(pycolmap, layout, len(names))


def _check_features(pycolmap: Any, layout: _Layout, total: int) -> None:
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


def _match(pycolmap: Any, layout: _Layout, names: list[str], options: SfmOptions, sup: _Supervisor) -> None:
    matcher = options.matcher
    if matcher == "auto":
        matcher = "exhaustive" if len(names) <= AUTO_EXHAUSTIVE_MAX_IMAGES else "sequential"
    match, pairing = pycolmap.match_exhaustive, {}
    if matcher == "sequential" or (matcher == "sequential_loop" and options.vocab_tree_path is not None):
        # Linear overlap: image i with i+1 … i+overlap. In pycolmap 4.2.1 quadratic_overlap does not
        # add to that but replaces it (i+1, i+2, i+4, … i+2^(overlap−1)), too sparse between
        # neighbouring frames, where the matches that hold a video's track together are.
        sequential = pycolmap.SequentialPairingOptions(
            overlap=options.sequential_overlap, quadratic_overlap=False, num_threads=options.num_threads
        )
        if matcher == "sequential_loop":
            # COLMAP's own loop detection (vocabulary-tree retrieval every 10th frame, its defaults).
            # Untested here: no vocabulary tree file exists on these hosts (COLMAP downloads one).
            sequential.loop_detection = True
            sequential.vocab_tree_path = options.vocab_tree_path
        match, pairing = pycolmap.match_sequential, {"pairing_options": sequential}
    elif matcher == "sequential_loop":
        pairs = sup.run("match", lambda token: _video_pairs(pycolmap, layout, names, options))
        write_pairs(layout.pairs, names, pairs)
        log.info("sfm: %d pairs to match (window %d + retrieval)", len(pairs), options.sequential_overlap)
        match = pycolmap.match_image_pairs
        pairing = {"pairing_options": pycolmap.ImportedPairingOptions(match_list_path=layout.pairs)}
    matching = pycolmap.FeatureMatchingOptions(num_threads=options.num_threads)
    log.info("sfm: %s matching of %d images", matcher, len(names))
    sup.run(
        "match",
        lambda token: match(
            layout.database,
            matching_options=matching,
            device=pycolmap.Device.auto,
            cancellation_token=token,
            **pairing,
        ),
        span=STEP_SPANS["match"],
    )


def _video_pairs(pycolmap: Any, layout: _Layout, names: list[str], options: SfmOptions) -> list[Pair]:
    """The window pairs plus loop-closure candidates retrieved by a bag of words over the SIFT
    descriptors in the database (pairs.py). Plain numpy, not cancellable: ~1 s per 100 frames."""
    with pycolmap.Database.open(layout.database) as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        descriptors = [
            db.read_descriptors(ids[name]).data if name in ids else np.zeros((0, 128), np.uint8)
            for name in names
        ]
    signatures = bag_of_words(descriptors)
    pairs = sequential_loop_pairs(
        signatures, overlap=options.sequential_overlap, top_k=options.loop_candidates
    )
    # Images that never reached the database (unreadable) cannot be matched: COLMAP would fail on them.
    return [(i, j) for i, j in pairs if names[i] in ids and names[j] in ids]


def _map(pycolmap: Any, layout: _Layout, count: int, options: SfmOptions, sup: _Supervisor) -> Any:
    mapping = pycolmap.IncrementalPipelineOptions(num_threads=options.num_threads)
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
        done_fraction=lambda: min(1.0, (registered[0] + 2) / count),
    )
    if not models:
        raise JobError(
            "no 3D model could be built: the photos share too few matching features "
            "(they need overlapping views of a textured, static scene)",
            code="sfm_failed",
        )
    best = max(models.values(), key=lambda model: model.num_reg_images())
    best.write(_mkdir(layout.sparse / "best"))
    return best


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


def _undistort(pycolmap: Any, layout: _Layout, options: SfmOptions, sup: _Supervisor) -> Path:
    sup.run(
        "undistort",
        lambda token: pycolmap.undistort_images(
            layout.undistorted,
            layout.sparse / "best",
            layout.images,
            output_type="COLMAP",
            num_threads=options.num_threads,
            cancellation_token=token,
        ),
        span=STEP_SPANS["undistort"],
    )
    model_dir = layout.undistorted / "sparse"
    models = {camera.model_name for camera in pycolmap.Reconstruction(model_dir).cameras.values()}
    if models != {"PINHOLE"}:  # the trainer's rasteriser handles pinhole cameras only
        raise RuntimeError(f"undistorted model has cameras {sorted(models)}, expected PINHOLE")
    return model_dir


# -- running pycolmap under supervision -----------------------------------------------------------


class _Supervisor:
    """Runs each pycolmap call in a helper thread and watches it from the calling thread."""

    def __init__(
        self, time_limit_s: float, progress: Callable[[float], None], should_stop: Callable[[], bool]
    ) -> None:
        self.time_limit_s = time_limit_s
        self.deadline = time.monotonic() + time_limit_s
        self.progress = progress
        self.should_stop = should_stop
        self.timings: dict[str, float] = {}

    def run(
        self,
        step: str,
        call: Callable[[Any], T],
        *,
        span: tuple[float, float] | None = None,
        done_fraction: Callable[[], float] = lambda: 0.0,
    ) -> T:
        """`call(token)` in a helper thread; `done_fraction()` is its progress within `span`."""
        import pycolmap

        self.check(step)
        token = pycolmap.CancellationToken()
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                if not token.is_cancelled:  # an interrupt may have come before this thread ran
                    outcome["value"] = call(token)
            except BaseException as exc:  # handed to the calling thread as is
                outcome["error"] = exc
            finally:
                done.set()

        # Waiting is done on an Event, never Thread.join: in CPython 3.11 an exception from a signal
        # handler inside join() marks a still-running thread as stopped (bpo-45274's fix assumes
        # the lock it finds held is its own), so a later join() returns at once.
        worker = threading.Thread(target=target, name=f"sfm-{step}", daemon=True)
        started, finished = time.monotonic(), False
        try:
            worker.start()  # inside the try: an interrupt may land while start() waits for the thread
            while not done.wait(POLL_S):  # a signal handler's exception interrupts this wait at once
                if span is not None:
                    self.progress(span[0] + (span[1] - span[0]) * done_fraction())
                self.check(step)
            finished = True
        finally:
            if not finished:  # leaving with an exception: stop pycolmap before it goes on
                token.cancel()
                if worker.ident is not None:  # else the thread, if any, will see the cancelled token
                    _wait_despite_interrupts(done)
            self.timings[step] = self.timings.get(step, 0.0) + time.monotonic() - started
        if "error" in outcome:
            raise outcome["error"]
        if span is not None:
            self.progress(span[1])
        return outcome["value"]

    def check(self, step: str) -> None:
        if self.should_stop():  # may itself raise the caller's interrupt
            raise JobError(f"structure from motion stopped on request (during {step})", code="sfm_stopped")
        if time.monotonic() > self.deadline:
            raise JobError(
                f"structure from motion exceeded its {self.time_limit_s:.0f} s limit (during {step})",
                code="sfm_timeout",
            )


def _wait_despite_interrupts(done: threading.Event) -> None:
    """Wait for a cancelled pycolmap call to return (0–1.2 s measured), even if another interrupt
    arrives meanwhile (a cancel after a preemption): the first exception is the one that propagates,
    and a pycolmap call left running in a daemon thread aborts the process at exit ("terminate called
    without an active exception")."""
    while True:
        try:
            done.wait()
            return
        except BaseException:  # noqa: B036 - a second interrupt; the first one is on its way out
            continue


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2] if values else 0
