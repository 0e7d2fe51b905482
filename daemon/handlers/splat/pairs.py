"""Which image pairs to match in an ordered frame sequence (video): a sliding window of neighbours
plus loop-closure candidates found by image retrieval.

Sequential matching alone links each frame only to the next few, so drift accumulates along an orbit
and its end never meets its start. COLMAP closes such loops with a vocabulary tree, a file it
downloads; without one we retrieve candidates ourselves: a bag of visual words over the SIFT
descriptors already extracted (a small vocabulary clustered from this very capture), weighted by
tf-idf, and for each frame the few most similar frames outside its window.

Pure functions on numpy arrays and frame indices; the caller reads the database and runs the matcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

Pair = tuple[int, int]
"""Two frame indices (positions in the input order), first < second."""

VOCAB_WORDS = 256
"""Visual words in the per-capture vocabulary. Enough to tell the sides of an orbit apart on the
bench's textured room; clustering cost grows linearly with it (~0.5 s at 256 for 20k samples)."""

VOCAB_SAMPLES = 20_000
"""Most descriptors k-means sees (spread evenly over the frames): the vocabulary needs a sample of
the capture's appearance, not every feature."""

VOCAB_ITERATIONS = 10
"""Lloyd iterations of k-means; retrieval only ranks frames, so a rough vocabulary does."""


def window_pairs(count: int, overlap: int) -> list[Pair]:
    """Each frame with the next `overlap` frames: (i, i+1) … (i, i+overlap)."""
    return [(i, j) for i in range(count) for j in range(i + 1, min(count, i + overlap + 1))]


def retrieval_pairs(signatures: np.ndarray, *, min_gap: int, top_k: int) -> list[Pair]:
    """For each frame (a row of L2-normalised `signatures`), its `top_k` most similar frames at
    least `min_gap` positions away, as unique sorted pairs. Ties go to the nearer frame index."""
    count = len(signatures)
    if count == 0 or top_k < 1:
        return []
    similarity = signatures @ signatures.T
    index = np.arange(count)
    near = np.abs(index[:, None] - index[None, :]) < min_gap
    similarity = np.where(near, -np.inf, similarity)
    pairs: set[Pair] = set()
    for i in range(count):
        candidates = np.flatnonzero(np.isfinite(similarity[i]))
        # Stable sort on −similarity after ordering by distance: equal scores keep the nearer frame.
        candidates = candidates[np.argsort(np.abs(candidates - i), kind="stable")]
        best = candidates[np.argsort(-similarity[i, candidates], kind="stable")[:top_k]]
        pairs.update((min(i, int(j)), max(i, int(j))) for j in best)
    return sorted(pairs)


def sequential_loop_pairs(signatures: np.ndarray, *, overlap: int, top_k: int) -> list[Pair]:
    """The window pairs plus, for each frame, its `top_k` retrieval candidates beyond the window."""
    pairs = set(window_pairs(len(signatures), overlap))
    pairs.update(retrieval_pairs(signatures, min_gap=overlap + 1, top_k=top_k))
    return sorted(pairs)


def bag_of_words(
    descriptors: Sequence[np.ndarray],
    *,
    words: int = VOCAB_WORDS,
    samples: int = VOCAB_SAMPLES,
    iterations: int = VOCAB_ITERATIONS,
    seed: int = 0,
) -> np.ndarray:
    """One L2-normalised tf-idf histogram of visual words per frame (rows), from each frame's local
    descriptors (n_i × d, e.g. SIFT's uint8 rows). The vocabulary is k-means over a sample of all
    frames' descriptors. A frame without descriptors gets a zero row (similar to nothing)."""
    rng = np.random.default_rng(seed)
    # Frames stay in their own dtype (SIFT: uint8) until used: 200 frames of 4,096 float32
    # descriptors would take 420 MB at once.
    nonempty = [d for d in descriptors if len(d)]
    if not nonempty:
        return np.zeros((len(descriptors), 1), np.float32)
    per_frame = max(1, samples // len(nonempty))
    sample = np.concatenate([d[rng.permutation(len(d))[:per_frame]] for d in nonempty]).astype(np.float32)
    centres = _kmeans(sample, min(words, len(sample)), iterations, rng)
    counts = np.zeros((len(descriptors), len(centres)), np.float32)
    for row, frame in enumerate(descriptors):
        if len(frame):
            labels = _nearest(np.asarray(frame, dtype=np.float32), centres)
            counts[row] = np.bincount(labels, minlength=len(centres))
    document_frequency = np.count_nonzero(counts, axis=0)
    idf = np.log(len(descriptors) / np.maximum(document_frequency, 1)).astype(np.float32)
    weighted = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * idf
    norms = np.linalg.norm(weighted, axis=1, keepdims=True)
    return np.asarray(weighted / np.maximum(norms, 1e-12), dtype=np.float32)


def write_pairs(path: Path, names: Sequence[str], pairs: Sequence[Pair]) -> None:
    """The pairs as COLMAP's image-pair list (`name1 name2` per line), for `ImportedPairingOptions`."""
    path.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in pairs))


def _kmeans(points: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    centres = points[rng.choice(len(points), k, replace=False)].copy()
    for _ in range(iterations):
        labels = _nearest(points, centres)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, points)
        sizes = np.bincount(labels, minlength=k)
        empty = sizes == 0
        centres[~empty] = sums[~empty] / sizes[~empty, None]
        # An empty cluster restarts at a random descriptor rather than dying.
        centres[empty] = points[rng.choice(len(points), int(empty.sum()))]
    return centres


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre per point (squared distance up to the points' own norms)."""
    return np.asarray(np.argmin(np.sum(centres**2, axis=1) - 2 * points @ centres.T, axis=1))
