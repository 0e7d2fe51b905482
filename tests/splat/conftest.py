"""Fixtures shared by the SfM tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def quiet_colmap():
    """COLMAP logs every image at INFO: warnings and errors only for the module, then as it was."""
    import pycolmap

    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2
    yield
    pycolmap.logging.minloglevel = level
