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
    | ours: the defaults (720 px,     | 32.3-35.4  | 0.51-0.53  | 50/50      | 0.201-0.214 / 0.316-0.344   |
    |   camera check, pp refined)     |            |            |            |                             |
    | the defaults, first_octave=0    | 12.6       | 0.19       | 50/50      | 0.164 / 0.273               |

    The principal point refined last (sfm_refine.py, with its table on Strecha's laser-scanned sets,
    where it cut the error 2-4×) is what brings the error below the defaults'. Measured and not
    taken: the mapper's `ba_global_frames_ratio`/`ba_global_points_ratio` at 1.4 (COLMAP: 1.1) saved
    0-25% of mapping (at most 8% of the stage) for ±0.02° (castle-P30's median 15% worse), and 25
    global iterations (COLMAP: 50) nothing measurable. (Before photos shared cameras (sfm_cameras.py)
    and walks were matched along their order, our stage took 0.95× the defaults' time there, mapping
    50 cameras.)
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
    # SIFT's first octave: -1 (COLMAP's default) doubles the image before the pyramid, 0 does not.
    # Measured with the other defaults (bench_sfm.py --photos, median / p90 rotation error °, time ×
    # pycolmap's defaults): 0 is 3-5× faster everywhere and registered every photo of the five real
    # sets, but is more accurate only on the phone photos; the finest, doubled octave pays on sharp
    # ones, and pycolmap's own synthetic 640×480 set (sparse patches) builds no model without it:
    #   fox (50 phone photos)        -1: 0.201-0.214 / 0.316-0.344, 0.51-0.53×   0: 0.164 / 0.273, 0.19×
    #   Strecha fountain-P11 (11)    -1: 0.100 / 0.183, 0.67×                    0: 0.250 / 0.491, 0.18×
    #   Strecha entry-P10 (10)       -1: 0.110 / 0.185, 0.82×                    0: 0.137 / 0.237, 0.30×
    #   Strecha Herz-Jesu-P25 (25)   -1: 0.058 / 0.120, 0.67×                    0: 0.105 / 0.213, 0.18×
    #   Strecha castle-P30 (30)      -1: 0.143 / 0.523, 0.57×                    0: 0.199 / 0.374, 0.13×
    #   rendered ring (16, 800×600)  -1: 0.058°, 11.5 s                          0: 0.076°, 3.6 s
    # So -1 stays the default until 0 can fall back to it (a capture that does not register in full
    # at 0 extracted again at -1) and sharp photos can keep it (issue 14's next step).
    first_octave: int = -1
    # Pairing: "auto" = exhaustive up to AUTO_EXHAUSTIVE_MAX_IMAGES images, retrieval above;
    # "sequential_loop" = sequential plus loop-closure pairs (ordered video frames: VIDEO_MATCHER);
    # "retrieval" = each image with its most similar ones by a bag of words (any order, linear cost).
    # The constants, and the measurements behind them, are in sfm_matching.py.
    matcher: Matcher = "auto"
    # Sequential matching pairs each image with this many following ones.
    sequential_overlap: int = 10
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
    ba_global_ratio: float = 1.1
    # CPU threads pycolmap may use in every sub-step.
    num_threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise ValueError(f"unknown matcher {self.matcher!r}: use one of {', '.join(MATCHERS)}")
        if self.cameras not in CAMERA_GROUPINGS:
            raise ValueError(
                f"unknown camera grouping {self.cameras!r}: use one of {', '.join(CAMERA_GROUPINGS)}"
            )
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
