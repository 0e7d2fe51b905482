"""The generated survey's world (clouds.py): rolling terrain, houses with flat or gabled roofs and trees,
drawn once from a seed and an extent, so every block of pulses flies over the same one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORIGIN = (500_000.0, 5_000_000.0)
"""The south-west corner of the surveyed square (UTM 33N metres)."""


@dataclass(frozen=True)
class _Houses:
    """Buildings on a lattice of `cell` m squares, at most one per square and well inside it, so a
    point finds its only candidate by the square it falls in. Arrays are one entry per square."""

    cell: float
    side: int  # squares per side
    present: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    hx: np.ndarray  # half the footprint along x
    hy: np.ndarray
    eave: np.ndarray  # absolute z of the eaves (of a flat roof)
    rise: np.ndarray  # ridge above the eaves, 0 for a flat roof
    ridge_along_x: np.ndarray
    colour: np.ndarray  # (squares, 3) 8-bit
    reflectance: np.ndarray


@dataclass(frozen=True)
class _Trees:
    """Trees on a lattice of `cell` m squares, at most one per square, its crown inside the square."""

    cell: float
    side: int
    present: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray  # of the crown, horizontally
    centre_z: np.ndarray  # absolute z of the crown's centre
    half_height: np.ndarray  # of the crown, an ellipsoid


@dataclass(frozen=True)
class _World:
    """What the survey sees, drawn once from the seed; local coordinates (metres from `ORIGIN`)."""

    extent: float
    waves: np.ndarray  # (k, 4): kx, ky, phase, amplitude of the terrain's sine waves
    houses: _Houses | None
    trees: _Trees | None


def _terrain(waves: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ground height at local (x, y): 250 m plus a few smooth sine waves (slopes up to ~15 %), summed
    in float32, which is 2.5 times as fast and off by well under a millimetre."""
    x32, y32 = np.asarray(x, np.float32), np.asarray(y, np.float32)
    z = np.zeros(np.shape(x), np.float32)
    for kx, ky, phase, amplitude in waves.astype(np.float32):
        z += amplitude * np.sin(kx * x32 + (ky * y32 + phase))
    return np.add(z, 250.0, dtype=np.float64)


def _world(seed: int, extent: float, buildings: bool, trees: bool) -> _World:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    wavelengths, amplitudes = (
        np.array([500, 350, 180, 90, 45, 25.0]),
        np.array([2, 1.5, 0.8, 0.4, 0.15, 0.05]),
    )
    angle = rng.uniform(0, 2 * np.pi, len(wavelengths))
    k = 2 * np.pi / wavelengths
    waves = np.c_[k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi, len(k)), amplitudes]
    houses = _draw_houses(rng, extent, waves) if buildings else None
    return _World(extent, waves, houses, _draw_trees(rng, extent, waves, houses) if trees else None)


def _lattice(extent: float, cell: float) -> tuple[int, np.ndarray]:
    """Squares per side, and the south-west corner of each square, row by row from the south."""
    side = int(np.ceil(extent / cell))
    rows, columns = np.divmod(np.arange(side * side), side)
    return side, np.c_[columns, rows] * cell


def _place(rng: np.random.Generator, corner: np.ndarray, cell: float, margin: np.ndarray) -> np.ndarray:
    """A centre in each square, at least `margin` (squares, 2) from its edges."""
    return corner + margin + rng.random(corner.shape) * (cell - 2 * margin)


def _draw_houses(rng: np.random.Generator, extent: float, waves: np.ndarray) -> _Houses:
    """Two 40 m squares in five have a house of 8–26 m, 7 m or more from the square's edge, so
    its wall hits and the trees around it stay inside the square; half have gabled tile roofs."""
    cell = 40.0
    side, corner = _lattice(extent, cell)
    squares = side * side
    half = rng.uniform(4, 13, (squares, 2))
    centre = _place(rng, corner, cell, half + 7)
    present = (rng.permutation(squares) < round(0.4 * squares)) & (centre + half < extent).all(axis=1)
    gabled = rng.random(squares) < 0.5
    eave = _terrain(waves, centre[:, 0], centre[:, 1]) + rng.uniform(3, 12, squares)
    tiles = np.array([175, 75, 55]) + rng.normal(0, 12, (squares, 3))
    concrete = 135 + rng.normal(0, 15, (squares, 1)).repeat(3, axis=1)
    return _Houses(
        cell, side, present, centre[:, 0], centre[:, 1], half[:, 0], half[:, 1], eave,
        rise=np.where(gabled, 0.7 * half.min(axis=1), 0.0), ridge_along_x=half[:, 0] >= half[:, 1],
        colour=np.clip(np.where(gabled[:, None], tiles, concrete), 0, 255),
        reflectance=np.where(gabled, 0.3, 0.5),
    )  # fmt: skip


def _draw_trees(rng: np.random.Generator, extent: float, waves: np.ndarray, houses: _Houses | None) -> _Trees:
    """A tree in most 8 m squares of a few woods and in a few squares elsewhere; none within 1.5 m of
    a house. Crowns are ellipsoids 3–7 m wide on trunks 1.5–5 m tall."""
    cell = 8.0
    side, corner = _lattice(extent, cell)
    squares = side * side
    radius = rng.uniform(1.5, 3.5, squares)
    centre = _place(rng, corner, cell, radius[:, None].repeat(2, axis=1))
    x, y = centre.T
    woods = np.sin(x / 70 + rng.uniform(0, 6)) + np.sin(y / 55 + rng.uniform(0, 6)) > 0.8
    present = (rng.random(squares) < np.where(woods, 0.6, 0.06)) & (centre + radius[:, None] < extent).all(1)
    if houses is not None:  # a crown (≤ 3.5 m) can reach only the house of its own 40 m square
        h = _square(houses.cell, houses.side, x, y)
        present &= ~houses.present[h] | (np.hypot(*_outside(houses, h, x, y)) > radius + 1.5)
    half_height = radius * rng.uniform(1.0, 1.6, squares)
    centre_z = _terrain(waves, x, y) + rng.uniform(1.5, 5, squares) + half_height
    return _Trees(cell, side, present, x, y, radius, centre_z, half_height)


def _square(cell: float, side: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The lattice square of each point (points off the survey fall in the nearest edge square)."""
    column = np.clip(x * (1 / cell), 0, side - 1).astype(np.int64)
    return np.clip(y * (1 / cell), 0, side - 1).astype(np.int64) * side + column


def _outside(houses: _Houses, h: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far (x, y) lie outside the footprint of house `h`, along x and along y (0 inside)."""
    return (
        np.maximum(np.abs(x - houses.cx[h]) - houses.hx[h], 0),
        np.maximum(np.abs(y - houses.cy[h]) - houses.hy[h], 0),
    )


def _crown_share(world: _World) -> float:
    """The share of the square under crowns, hence of pulses that may return several times."""
    trees = world.trees
    return 0.0 if trees is None else float(np.pi * (trees.radius[trees.present] ** 2).sum() / world.extent**2)
