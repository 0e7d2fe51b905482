"""Pair selection for ordered frames (daemon/handlers/splat/pairs.py): the sliding window, retrieval of
loop-closure candidates on a synthetic closed orbit, the bag of visual words, the pair-list file."""

from __future__ import annotations

import numpy as np

from daemon.handlers.splat.pairs import (
    bag_of_words,
    retrieval_pairs,
    sequential_loop_pairs,
    window_pairs,
    write_pairs,
)


def orbit_thumbnails(count: int, seed: int = 0) -> np.ndarray:
    """Normalised "thumbnails" of `count` frames on a closed orbit: each frame sees a 60° window of
    a smooth random 360° panorama (16×8 px per frame), so frames near each other, including the last
    and the first, look alike and frames across the circle do not."""
    rng = np.random.default_rng(seed)
    harmonics = np.arange(1, 13)
    amplitudes = rng.normal(size=(8, 12)) / harmonics  # smooth: weak high frequencies
    phases = rng.uniform(0, 2 * np.pi, size=(8, 12))
    angles = np.deg2rad(np.arange(360))[:, None]
    panorama = np.stack([np.cos(harmonics * angles + p) @ a for a, p in zip(amplitudes, phases, strict=True)])
    thumbs = []
    for index in range(count):
        start = round(360 * index / count)
        window = np.take(panorama, range(start, start + 60), axis=1, mode="wrap")[:, ::4]
        thumb = (window - window.mean()).ravel()
        thumbs.append(thumb / np.linalg.norm(thumb))
    return np.array(thumbs)


def test_window_pairs_link_each_frame_to_the_next_overlap_frames():
    # When 5 frames are paired with an overlap of 2, then each meets the next two, to the end
    assert window_pairs(5, 2) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4)]
    # And a window longer than the sequence pairs everything once
    assert window_pairs(4, 10) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert window_pairs(1, 3) == [] and window_pairs(0, 3) == []


def test_loop_pairs_close_a_synthetic_orbit_outside_the_window():
    # Given thumbnails of 30 frames around a closed orbit
    thumbs = orbit_thumbnails(30)
    # When pairs are chosen with a window of 3 and 2 retrieval candidates per frame
    pairs = sequential_loop_pairs(thumbs, overlap=3, top_k=2)
    loop = retrieval_pairs(thumbs, min_gap=4, top_k=2)
    # Then pairs are unique and ordered, and hold the whole window
    assert len(pairs) == len(set(pairs)) and all(i < j for i, j in pairs) and pairs == sorted(pairs)
    assert set(window_pairs(30, 3)) <= set(pairs) and set(loop) <= set(pairs)
    # And the retrieved ones all lie beyond the window, at most 2 per frame asking
    assert loop and all(j - i > 3 for i, j in loop)
    assert len(loop) <= 2 * 30
    # And they join the start of the orbit to its end, where the view comes back
    closing = {(i, j) for i, j in loop if i < 3 and j >= 27}
    assert (0, 29) in closing and len(closing) >= 3
    # And nothing links frames across the circle: every pair is within a quarter turn
    assert all(min(j - i, 30 - (j - i)) <= 30 // 4 for i, j in loop)


def test_retrieval_of_nothing_or_with_no_room_outside_the_window():
    assert retrieval_pairs(np.zeros((0, 8)), min_gap=2, top_k=3) == []
    assert retrieval_pairs(orbit_thumbnails(5), min_gap=5, top_k=3) == []  # every frame is near
    assert retrieval_pairs(orbit_thumbnails(5), min_gap=2, top_k=0) == []


def test_bag_of_words_finds_frames_that_share_local_features():
    # Given 24 frames around an orbit, each seeing noisy copies of the SIFT-like descriptors of the 3
    # nearest of 12 places on the circle (6 distinct ones per place), and a frame with no features
    rng = np.random.default_rng(1)
    places = rng.integers(0, 200, size=(12, 6, 128))
    descriptors = []
    for index in range(24):
        nearest = [(index // 2 + offset) % 12 for offset in (-1, 0, 1)]
        seen = np.concatenate([places[p] for p in nearest]).repeat(10, axis=0)
        seen = seen + rng.integers(-8, 9, size=seen.shape)
        descriptors.append(np.clip(seen, 0, 255).astype(np.uint8))
    descriptors.append(np.zeros((0, 128), np.uint8))
    # When each frame is summarised as a bag of words
    signatures = bag_of_words(descriptors, words=128)
    # Then the rows are unit vectors, but the featureless frame's, which is zero
    assert signatures.shape == (25, 128)
    assert np.allclose(np.linalg.norm(signatures[:24], axis=1), 1.0) and not signatures[24].any()
    # And the orbit's last frame looks like its first, not like the frames across the circle
    similarity = signatures[:24] @ signatures[:24].T
    assert similarity[0, 23] > 2 * similarity[0, 12]
    # And retrieval beyond a window of 4 closes the loop
    loop = retrieval_pairs(signatures[:24], min_gap=5, top_k=2)
    assert any(i < 2 and j > 21 for i, j in loop)


def test_bag_of_words_without_any_features_is_all_zero():
    signatures = bag_of_words([np.zeros((0, 128), np.uint8)] * 3)
    assert len(signatures) == 3 and not signatures.any()


def test_pairs_file_names_the_images_one_pair_a_line(tmp_path):
    write_pairs(tmp_path / "pairs.txt", ["a.jpg", "b.jpg", "c.jpg"], [(0, 1), (0, 2)])
    assert (tmp_path / "pairs.txt").read_text() == "a.jpg b.jpg\na.jpg c.jpg\n"
