"""The read stage's sample for the spacing (describe.Sample): about its target size and even over the file
whatever the count it was told to expect, so a text table whose count was only estimated (low) cannot
make it the cloud's size."""

from __future__ import annotations

import laspy
import numpy as np
import pytest

from daemon.handlers.pointcloud.describe import SAMPLE_POINTS, Sample


def _chunks(points: int, size: int = 250_000):
    for start in range(0, points, size):
        n = min(size, points - start)
        scales, offsets = np.array([0.001] * 3), np.zeros(3)
        records = laspy.ScaleAwarePointRecord.zeros(
            n, point_format=laspy.PointFormat(6), scales=scales, offsets=offsets
        )
        records.x = np.arange(start, start + n) * 0.001  # x is the point's index, to see where it came from
        yield records


@pytest.mark.parametrize("expected", [2_000_000, 1], ids=["told the count", "told one point"])
def test_the_sample_is_near_its_target_and_even_over_the_file(expected):
    sample = Sample(expected)
    for chunk in _chunks(2_000_000):
        sample.add(chunk)
    picked = sample.points()
    assert SAMPLE_POINTS / 2 <= len(picked) <= 2 * SAMPLE_POINTS
    # even: each tenth of the file gives a tenth of the sample, within 2%
    share = np.histogram(picked[:, 0] / 0.001, bins=10, range=(0, 2_000_000))[0] / len(picked)
    assert np.abs(share - 0.1).max() < 0.02, share
