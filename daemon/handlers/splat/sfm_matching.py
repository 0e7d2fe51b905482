"""Which image pairs structure from motion matches, and matching them: exhaustive for small sets,
for large ones each image with its most similar images retrieved by a bag of words over the capture's
own descriptors (pairs.py; any order, linear cost), and for video frames sequential plus loop-closure
pairs retrieved the same way."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .pairs import Pair, bag_of_words, retrieval_pairs, sequential_loop_pairs, write_pairs
from .sfm_options import Matcher, SfmOptions
from .sfm_supervisor import STEP_SPANS, Supervisor
from .workspace import SfmLayout

log = logging.getLogger(__name__)

AUTO_EXHAUSTIVE_MAX_IMAGES = 50
"""Largest set the "auto" matcher matches exhaustively. Exhaustive matching costs n(n−1)/2 pairs:
1,225 at 50 images, 4,950 at 100, 19,900 at 200; measured (scripts/bench_sfm.py, 1024 px, 4,096
features) a pair costs ~0.14 CPU-s to match and verify, so 50 images take ~3 CPU-min (~1.5 min on 2
cores) and 200 would take ~45 CPU-min. Above it "auto" retrieves pairs (RETRIEVAL), at most
`retrieval_neighbors` per image whatever the order the photos came in (sequential matching, the
earlier choice, assumed a walk in file order and linked nothing else)."""

RETRIEVAL: Matcher = "retrieval"
"""The "auto" matcher above AUTO_EXHAUSTIVE_MAX_IMAGES images."""

VIDEO_MATCHER: Matcher = "sequential_loop"
"""Matcher for video frames (with `cameras="single"`), whatever their count. Measured with
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


def choose_matcher(count: int, options: SfmOptions) -> str:
    """The matcher for `count` images: the options' own, or for "auto" sequential_loop for photos taken
    in their input order (`options.ordered`: a walk around the object, like a video's frames), else
    exhaustive up to AUTO_EXHAUSTIVE_MAX_IMAGES images and RETRIEVAL above."""
    if options.matcher != "auto":
        return options.matcher
    if options.ordered:
        return "sequential_loop"
    return "exhaustive" if count <= AUTO_EXHAUSTIVE_MAX_IMAGES else RETRIEVAL


def is_ordered_walk(sources: Sequence[str], taken: Sequence[str | None] | None = None) -> bool:
    """Whether photos came in the order they were taken: their capture times (EXIF, all known) never
    go back, or, without them, the numbers in their file names only go up (IMG_0001, IMG_0002, … as
    phones and cameras number their shots). Three photos at least; equal times throughout say nothing."""
    if len(sources) < 3:
        return False
    if taken and all(taken):
        times = [str(t) for t in taken]
        return all(a <= b for a, b in zip(times, times[1:], strict=False)) and times[0] != times[-1]
    numbers = [_last_number(Path(source).stem) for source in sources]
    known = [n for n in numbers if n is not None]
    return len(known) == len(numbers) and all(a < b for a, b in zip(known, known[1:], strict=False))


def _last_number(stem: str) -> int | None:
    found = re.findall(r"\d+", stem)
    return int(found[-1]) if found else None


def match_features(
    pycolmap: Any, layout: SfmLayout, names: list[str], options: SfmOptions, sup: Supervisor
) -> str:
    """Sub-step `match`: the pairs `options.matcher` chooses ("auto": by the number of images),
    matched and verified into the database."""
    matcher = choose_matcher(len(names), options)
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
    elif matcher in ("sequential_loop", "retrieval"):
        pairs = sup.run("match", lambda token: _retrieved_pairs(pycolmap, layout, names, matcher, options))
        write_pairs(layout.pairs, names, pairs)
        log.info("sfm: %d pairs to match (%s)", len(pairs), matcher)
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
    return matcher


def _retrieved_pairs(
    pycolmap: Any, layout: SfmLayout, names: list[str], matcher: str, options: SfmOptions
) -> list[Pair]:
    """By a bag of words over the SIFT descriptors in the database (pairs.py): for "sequential_loop"
    the window pairs plus loop-closure candidates, for "retrieval" each image's most similar images.
    Plain numpy, not cancellable: ~1 s per 100 images."""
    with pycolmap.Database.open(layout.database) as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        descriptors = [
            db.read_descriptors(ids[name]).data if name in ids else np.zeros((0, 128), np.uint8)
            for name in names
        ]
    signatures = bag_of_words(descriptors)
    if matcher == "retrieval":
        pairs = retrieval_pairs(signatures, min_gap=1, top_k=options.retrieval_neighbors)
    else:
        pairs = sequential_loop_pairs(
            signatures, overlap=options.sequential_overlap, top_k=options.loop_candidates
        )
    # Images that never reached the database (unreadable) cannot be matched: COLMAP would fail on them.
    return [(i, j) for i, j in pairs if names[i] in ids and names[j] in ids]
