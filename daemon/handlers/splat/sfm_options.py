"""What structure from motion may be asked: the `SfmOptions` of `run_sfm` (sfm.py) and their measured
defaults; the matchers are chosen in sfm_matching.py."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from .sfm_cameras import CAMERA_GROUPINGS, CameraGrouping

Matcher = Literal["auto", "exhaustive", "sequential", "sequential_loop", "retrieval"]
MATCHERS: tuple[Matcher, ...] = get_args(Matcher)


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

    On real photos (`bench_sfm.py --photos`: instant-ngp's fox, 50 phone photos at 540×960 without
    EXIF, numbered as shot so matched as a walk; 2 threads, a quiet machine; wall seconds of extract +
    match + map, each row the range over 3-4 runs; pairwise rotation error against the published poses):

    | run                             | s          | × defaults | registered | rot median / p90 °          |
    | pycolmap defaults (1 camera)    | 61.9-67.8  | 1          | 50/50      | 0.225-0.229 / 0.452-0.470   |
    | ours, SIFT 1024 px, 4096 feat.  | 45.0-47.5  | 0.72-0.74  | 50/50      | 0.228-0.238 / 0.461-0.469   |
    | ours, 800 px                    | 36.6       | 0.58       | 50/50      | 0.217 / 0.436               |
    | ours, 720 px, centred pp        | 29.8-33.6  | 0.47-0.51  | 50/50      | 0.228-0.234 / 0.469-0.498   |
    | ours, 720 px, 2048 features     | 30.4-34.5  | 0.47-0.55  | 50/50      | 0.210-0.216 / 0.444-0.453   |
    | ours, 720 px, 3072 features     | 32.0       | 0.49       | 50/50      | 0.234 / 0.473               |
    | ours, 640 px                    | 24.6       | 0.39       | 50/50      | 0.255 / 0.501               |
    | 720 px, camera check, pp refined| 32.3-35.4  | 0.51-0.53  | 50/50      | 0.201-0.214 / 0.316-0.344   |
    | ours: the defaults (as above,   | 25.4       | 0.45-0.46  | 50/50      | 0.206-0.217 / 0.319-0.339   |
    |   overlap 8, global BA at 1.25) |            |            |            |                             |
    | the defaults, auto octave       | 11.6-12.1  | 0.21-0.22  | 50/50      | 0.140-0.149 / 0.269         |
    |   (SIFT undoubled, 960 px)      |            |            |            |                             |

    The principal point refined last (sfm_refine.py, with its table on Strecha's laser-scanned sets,
    where it cut the error 2-4×) is what brings the error below the defaults'; a shorter sequential
    window and fewer global adjustments (below) bring the time under half. Measured and not taken:
    the global adjustments at 1.4 (castle-P30's median 15% worse), 25 global iterations (COLMAP:
    50: nothing measurable), and 2048 features (as fast on a walk: matching a walk is not
    quadratic). Strecha's four sets at 960×640 with these defaults: 0.50-0.78× the defaults' time,
    every photo registered, median error 0.065-0.137° against their 0.204-0.464°. (Before photos
    shared cameras (sfm_cameras.py) and walks were matched along their order, our stage took 0.95×
    the defaults' time there, mapping 50 cameras.)
    """

    # Longest image side (px) SIFT sees; larger photos are downscaled for extraction only (SIFT's
    # first octave doubles the image again). 720: on the real photos above, half pycolmap's default
    # time (0.47-0.51×; 0.51-0.53× with the camera check and refinement) with every photo
    # registered, the median rotation error within 0.005° of the defaults' with the principal point
    # held at the centre and 0.02° below it refined (1024 took 0.72×, 640 was 0.03° worse); on the
    # rendered 1600×1200 set 720 registered 12/12 as 1024 did, and sparse sets (10 views 36° apart)
    # are unaffected below 720 px.
    max_image_size: int = 720
    # Most SIFT features kept per image. 4096: 8192 doubles matching and mapping (+95 CPU-s on 30
    # photos) for 60% more points; 2048 was as fast and 0.02° better on the fox above (3072 was not:
    # noise of which features are kept) but registered only 6 of a sparse set's 10 views (36° apart
    # at 640×480), which 4096 registers in full; 1024 is half the cost but gives a quarter of the
    # points and failed on that set too.
    max_num_features: int = 4096
    # SIFT's first octave: -1 (COLMAP's default) doubles the image before the pyramid, 0 does not;
    # None is the auto rule (sift_scale below): photos larger than max_image_size seen undoubled at
    # their own size up to twice it, and a capture that does not register in full that way
    # extracted again at -1, the pass that registered more kept (sfm.py). Measured with the other
    # defaults (bench_sfm.py --photos at 960 px long side; median / p90 rotation error °, time ×
    # pycolmap's defaults; "auto" = 0 at 960 px here):
    #   fox (50 frames of a phone video)  -1: 0.200-0.219 / 0.317-0.341, 0.51×
    #                                     auto: 0.162-0.164 / 0.266-0.283, 0.24-0.26×
    #   Strecha fountain-P11 (11 photos)  -1: 0.098 / 0.180, 0.65×              auto: 0.300 / 0.584, 0.27×
    #   Strecha entry-P10 (10)            -1: 0.061 / 0.088, 0.77×              auto: 0.277 / 0.494, 0.37×
    #   Strecha Herz-Jesus-P25 (25)       -1: 0.060 / 0.123, 0.62×              auto: 0.060 / 0.109, 0.23×
    #   Strecha castle-P30 (30)           -1: 0.142 / 0.441, 0.57×              auto: 0.230 / 0.643, 0.21×
    #   fountain, Gaussian blur 0.8 px    -1: 0.060 / 0.097                     auto: 0.399 / 0.834
    #   fountain, noise σ 5 + JPEG q 40   -1: 0.170 / 0.361                     auto: 0.177 / 0.343
    # The undoubled octave is 2.5-4× faster but more accurate only on the video frames, and noise
    # and compression (not blur) are what bring it level: so -1 for photos, and auto for video
    # frames (job.py), which are compressed and noisy as the fox's are. (Rendered scenes and
    # pycolmap's synthetic set register in part or not at all undoubled: the fall-back's tests.)
    first_octave: int | None = -1
    # Pairing: "auto" = exhaustive up to AUTO_EXHAUSTIVE_MAX_IMAGES images, retrieval above;
    # "sequential_loop" = sequential plus loop-closure pairs (ordered video frames: VIDEO_MATCHER);
    # "retrieval" = each image with its most similar ones by a bag of words (any order, linear cost).
    # The constants, and the measurements behind them, are in sfm_matching.py.
    matcher: Matcher = "auto"
    # Sequential matching pairs each image with this many following ones. 8: on the fox (a walk)
    # 10, 8, 7 and 6 registered 50/50 within 0.02° of each other, matching in 10.3, 9.2, 8.4 and
    # 7.7 s; 8 keeps a margin for walks with larger steps (COLMAP's default is 10).
    sequential_overlap: int = 8
    # "sequential_loop" adds, per image, this many retrieved loop-closure candidates beyond the window.
    # 5: on the bench's 96-frame orbit (320×240) 1, 2, 3 and 5 all closed the loop (rotations within
    # 0.1°; ~90% of candidates verified) and 5 cost 7% more CPU than 1 (1,283 pairs against 993);
    # the margin is for real footage, where retrieval misses more. COLMAP's own budget is similar
    # (50 retrieved images for every 10th frame).
    loop_candidates: int = 5
    # "retrieval" matches each image with this many most similar images (bag of words, pairs.py):
    # about 20 per image, the order of what COLMAP's own retrieval matching uses (its default is 50 on
    # community photo collections, where most candidates fail; a customer's capture is one object).
    retrieval_neighbors: int = 20
    # The images are a walk in input order (capture times or numbered file names: sfm_matching.py's
    # is_ordered_walk): "auto" then matches along the sequence with loop closure, as for video frames.
    ordered: bool = False
    # COLMAP vocabulary-tree file for "sequential_loop" (COLMAP's own loop detection); None = none
    # available (COLMAP downloads one; these hosts have no network), so we retrieve candidates ourselves.
    vocab_tree_path: Path | None = None
    # Fail when the model registers fewer than this share of the input images.
    min_registered_ratio: float = 0.5
    # ... or fewer than this many images, whatever the share.
    min_registered: int = 3
    # Wall-clock limit for the whole stage (seconds).
    time_limit_s: float = 1800.0
    # Which images share a camera (intrinsics): "auto" groups them by device (EXIF make, model, focal)
    # and size, "single" is one camera for all (video frames), "per_image" one each (sfm_cameras.py).
    cameras: CameraGrouping = "auto"
    # Mapping ends with a bundle adjustment that frees each camera's principal point when every camera
    # has at least this many registered photos (sfm_refine.py, with its table: on real photos the
    # median rotation error fell by 10-75% for 0.1-1.1 s; 10 is the smallest set measured); 0 = never.
    principal_point_min_images: int = 10
    # Incremental mapping adjusts the whole model each time the registered photos (or points) grow by
    # this factor (COLMAP's ba_global_frames_ratio and ba_global_points_ratio, 1.1 by default).
    # 1.25: mapping the fox took 7.3 s instead of 9.2 for the same error (0.206° / 0.205°), and
    # Strecha's sets in the table above; 1.4 was 15% less accurate on castle-P30.
    ba_global_ratio: float = 1.25
    # CPU threads pycolmap may use in every sub-step.
    num_threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise ValueError(f"unknown matcher {self.matcher!r}: use one of {', '.join(MATCHERS)}")
        if self.cameras not in CAMERA_GROUPINGS:
            raise ValueError(
                f"unknown camera grouping {self.cameras!r}: use one of {', '.join(CAMERA_GROUPINGS)}"
            )
        if self.first_octave is not None and self.first_octave < -1:
            raise ValueError("first_octave must be -1 (doubled), 0 or above, or None (auto)")
        if self.ba_global_ratio <= 1.0:
            raise ValueError("ba_global_ratio must be above 1")
        if not 0.0 <= self.min_registered_ratio <= 1.0:
            raise ValueError("min_registered_ratio must be within [0, 1]")
        counts = (
            self.max_image_size, self.max_num_features, self.sequential_overlap, self.num_threads,
            self.retrieval_neighbors,
        )  # fmt: skip
        if min(counts) < 1 or min(self.loop_candidates, self.principal_point_min_images) < 0:
            raise ValueError("sizes, counts and threads must be positive")


def sift_scale(long_side: int, options: SfmOptions) -> tuple[int, int]:
    """(first_octave, max_image_size) for SIFT on photos whose (median) longest side is `long_side`:
    the options' own when they set `first_octave`, else the auto rule of its comment."""
    if options.first_octave is not None:
        return options.first_octave, options.max_image_size
    if long_side <= options.max_image_size:
        return -1, options.max_image_size
    return 0, min(long_side, 2 * options.max_image_size)
