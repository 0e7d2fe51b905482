"""The textures of the sample room: one per surface, from photos or procedural noise.

Textures are scikit-image's bundled photos when that package is installed (realistic SIFT features),
else procedural noise-and-blob images. Either way the atlas is deterministic for a given seed.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
from PIL import Image

TextureSource = Literal["auto", "photos", "procedural"]

PHOTOS: list[tuple[str, tuple[float, float, float]]] = [
    ("gravel", (1.0, 0.9, 0.75)),  # floor quarter 1
    ("grass", (0.75, 1.0, 0.7)),  # floor quarter 2
    ("retina", (1, 1, 1)),  # floor quarter 3
    ("hubble_deep_field", (1, 1, 1)),  # floor quarter 4
    ("rocket", (1, 1, 1)),  # wall -y
    ("coffee", (1, 1, 1)),  # wall +x
    ("immunohistochemistry", (1, 1, 1)),  # wall +y
    ("moon", (0.9, 0.9, 1.0)),  # wall -x
    ("astronaut", (1, 1, 1)),  # box -y
    ("chelsea", (1, 1, 1)),  # box +x
    ("camera", (1.0, 0.85, 0.85)),  # box +y
    ("clock", (0.85, 1.0, 0.9)),  # box -x
    ("page", (1.0, 1.0, 0.8)),  # box top
    ("coins", (0.9, 0.8, 1.0)),  # sphere
]
"""Texture per surface (scikit-image name, RGB tint for grey photos), in the room's surface order; 14
distinct photos so that no pattern repeats across surfaces or within one (repeats, as in brick or text,
give SIFT ambiguous matches that misplace cameras)."""


def _photo_textures(size: int) -> list[np.ndarray] | None:
    try:
        from skimage import data
    except ImportError:
        return None
    textures = []
    for name, tint in PHOTOS:
        image = np.asarray(getattr(data, name)(), dtype=np.float32)
        if image.ndim == 2:
            image = image[..., None].repeat(3, axis=2)
        image = image[..., :3]
        # Stretch contrast: a few of the photos (moon, cell) are dim and would give few keypoints.
        lo, hi = np.percentile(image, [1, 99])
        image = np.clip((image - lo) * (255 / max(hi - lo, 1.0)), 0, 255) * np.asarray(tint, np.float32)
        textures.append(_resized(image, size))
    return textures


def procedural_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Multi-octave colour noise plus random discs: blobs and corners at many scales for SIFT
    (size×size×3 float, 0–255)."""
    image = np.zeros((size, size, 3), np.float32)
    for cells, weight in ((4, 90.0), (16, 60.0), (64, 40.0)):
        image += weight * _resized(rng.random((cells, cells, 3), dtype=np.float32), size)
    for _ in range(150):
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, size / 16)
        x0, x1, y0, y1 = (int(np.clip(v, 0, size)) for v in (cx - r, cx + r + 1, cy - r, cy + r + 1))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        image[y0:y1, x0:x1][(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(image, 0, 255)


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32)).resize((size, size))
        )
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=2)


@functools.lru_cache(maxsize=2)
def texture_atlas(source: TextureSource, seed: int, size: int = 512) -> np.ndarray:
    """All surface textures stacked as one (surfaces, size, size, 3) uint8 array, in `PHOTOS` order
    (cached: building it costs more than rendering a dozen views)."""
    textures = _photo_textures(size) if source != "procedural" else None
    rng = np.random.default_rng(seed)
    if textures is None:
        if source == "photos":
            raise RuntimeError("texture source 'photos' needs scikit-image")
        textures = [procedural_texture(rng, size) for _ in PHOTOS]
    else:
        # Fine grain, unique per surface, as real surfaces have: without it the smooth or repetitive
        # photos (coffee, clock, brick) leave whole views with too few distinctive keypoints.
        textures = [t * (0.75 + 0.5 * _noise(rng, size, (32, 128)))[..., None] for t in textures]
    atlas = np.clip(np.stack(textures), 0, 255).round().astype(np.uint8)
    atlas.flags.writeable = False
    return atlas


def _noise(rng: np.random.Generator, size: int, cells: tuple[int, ...]) -> np.ndarray:
    """Smooth value noise in [0, 1]: random grids of the given sizes, upsampled and averaged."""
    grids = [_resized(rng.random((c, c, 1), dtype=np.float32), size)[..., 0] for c in cells]
    return np.clip(sum(grids) / len(grids), 0, 1)
