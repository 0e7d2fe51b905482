"""Generated airborne lidar surveys with known truth, for the point-cloud job's tests, benchmark and demo.

A survey is what a drone lidar delivers over a square of countryside in EPSG:32633 (UTM 33N, real
coordinates near 500 000 E, 5 000 000 N, so a LAS offset matters): rolling terrain a few metres in
relief, box buildings with flat or gabled roofs and a few wall hits, trees whose crowns give several
returns per pulse, and isolated noise above and below. Each point carries its true ASPRS class, so
outlier removal (PDAL filters.outlier, filters.elm) and ground classification (CSF) can be scored:
2 ground, 5 high vegetation, 6 building, 7 low noise, 18 high noise.

Deterministic for a seed and streamable: the world (terrain, buildings, trees) is drawn once from the
seed and the extent; the flight is cut into blocks of `BLOCK` pulses, each drawn by its own generator.
So `survey_chunks` yields the very points of `survey`, in acquisition order, whatever the chunk size,
holding one chunk at a time. numpy only; the files are written by `cloud_files`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from .cloud_world import ORIGIN, _crown_share, _Houses, _outside, _square, _terrain, _Trees, _World, _world

EPSG = 32633
"""UTM zone 33N: metres, so extents and densities read directly, and x, y far from zero as in real data."""
DENSITY = 30.0
"""Returns per m² when no extent is given: a drone survey (20–50 per m²)."""
MIN_EXTENT_M = 120.0
"""The smallest default square, so that a test cloud of a few thousand points still has houses and trees."""
SWATH_M = 50.0
"""Width of one flight strip; the drone flies east and west in turn (strips do not overlap)."""
PULSE_RATE_HZ = 300_000.0
"""Pulses per second: sets the gps_time step between pulses."""
TURN_S = 30.0
"""Seconds spent turning between strips, so gps_time jumps between flight lines as in real files."""
GPS_TIME_START = 3.0e8
"""Adjusted standard GPS time (GPS seconds − 1e9) of the first pulse: a day in 2021."""
BLOCK = 1 << 16
"""Pulses per independently seeded block: the unit of determinism, so chunking never changes a point."""
GROUND, HIGH_VEGETATION, BUILDING, LOW_NOISE, HIGH_NOISE = 2, 5, 6, 7, 18
"""The true classes, ASPRS LAS 1.4 codes."""
TREE_RETURNS = np.array([0.15, 0.35, 0.33, 0.17])
"""Chances that a pulse into a crown gives 1, 2, 3 or 4 returns."""
UNDER_CANOPY_GROUND = 0.6
"""Chance that the last of several returns in a crown is the ground below it."""


@dataclass(frozen=True, eq=False)
class Cloud:
    """Points as LAS 1.4 holds them, one array per dimension; `classification` is the true class."""

    x: np.ndarray  # float64, metres in `epsg`
    y: np.ndarray
    z: np.ndarray
    intensity: np.ndarray  # uint16
    return_number: np.ndarray  # uint8, 1-based
    number_of_returns: np.ndarray  # uint8
    classification: np.ndarray  # uint8
    gps_time: np.ndarray  # float64, adjusted standard GPS time, non-decreasing
    red: np.ndarray | None  # uint16 (8-bit value × 257), or None without colour
    green: np.ndarray | None
    blue: np.ndarray | None
    epsg: int = EPSG

    def __len__(self) -> int:
        return len(self.x)

    @property
    def has_colour(self) -> bool:
        return self.red is not None

    def select(self, which: np.ndarray | slice) -> Cloud:
        """The points picked by a mask, indices or a slice."""
        columns: dict[str, Any] = {name: array[which] for name, array in _arrays(self).items()}
        return replace(self, **columns)

    @staticmethod
    def concatenate(parts: Sequence[Cloud]) -> Cloud:
        """One cloud of `parts` (same CRS, all with colour or none), in order."""
        if not parts:
            raise ValueError("no clouds to concatenate")
        columns: dict[str, Any] = {
            name: np.concatenate([_arrays(part)[name] for part in parts]) for name in _arrays(parts[0])
        }
        return replace(parts[0], **columns)


def _arrays(cloud: Cloud) -> dict[str, np.ndarray]:
    return {f.name: a for f in fields(cloud) if isinstance(a := getattr(cloud, f.name), np.ndarray)}


def _empty(colour: bool) -> Cloud:
    f8, u16, u8 = np.zeros(0), np.zeros(0, np.uint16), np.zeros(0, np.uint8)
    return Cloud(f8, f8, f8, u16, u8, u8, u8, f8, *((u16, u16, u16) if colour else (None, None, None)))


@dataclass
class _Pulses:
    """What each pulse of a block meets first, in local coordinates (metres from `ORIGIN`): the height
    and class of the first surface, a building's colour and reflectance, the bottom of a crown."""

    x: np.ndarray
    y: np.ndarray
    time: np.ndarray
    ground: np.ndarray
    surface: np.ndarray
    kind: np.ndarray
    paint: np.ndarray  # (pulses, 3) 8-bit colour of a building hit
    reflectance: np.ndarray  # of a building hit
    crown_bottom: np.ndarray


def _fly(world: _World, rng: np.random.Generator, block: int, pulses: float) -> _Pulses:
    """The pulses of `block`, spread evenly along the flight path: `pulses` would cover the square
    once, east then west strip by strip (the few beyond, as returns per pulse vary, fly the last
    strip again)."""
    strips = max(1, round(world.extent / SWATH_M))
    index = np.arange(block * BLOCK, (block + 1) * BLOCK)
    path = (index + rng.random(BLOCK)) * (strips * world.extent / pulses)
    strip = np.minimum(np.floor(path / world.extent), strips - 1)
    along = np.mod(path - strip * world.extent, world.extent)  # an overrun flies the last strip again
    x = np.where(strip % 2 == 0, along, world.extent - along)
    y = (strip + rng.random(BLOCK)) * (world.extent / strips)
    ground = _terrain(world.waves, x, y)
    time = GPS_TIME_START + index / PULSE_RATE_HZ + strip * TURN_S
    return _Pulses(
        x, y, time, ground, ground.copy(), np.full(BLOCK, GROUND, np.uint8),
        np.zeros((BLOCK, 3), np.float32), np.zeros(BLOCK, np.float32), ground,
    )  # fmt: skip


def _hit_houses(houses: _Houses, rng: np.random.Generator, p: _Pulses) -> None:
    """Roofs under the pulses, and half the pulses within 0.5 m outside a footprint on its wall
    (a drone's beam is a few degrees off nadir)."""
    h = _square(houses.cell, houses.side, p.x, p.y)
    near = np.flatnonzero(houses.present[h])
    dx, dy = _outside(houses, h[near], p.x[near], p.y[near])
    roof = (dx == 0) & (dy == 0)
    hit = roof | ((dx * dx + dy * dy < 0.25) & (rng.random(len(near)) < 0.5))
    near, h, roof = near[hit], h[near][hit], roof[hit]
    x = np.clip(p.x[near], houses.cx[h] - houses.hx[h], houses.cx[h] + houses.hx[h])  # wall hits onto
    y = np.clip(p.y[near], houses.cy[h] - houses.hy[h], houses.cy[h] + houses.hy[h])  # their wall
    across = np.where(
        houses.ridge_along_x[h], abs(y - houses.cy[h]) / houses.hy[h], abs(x - houses.cx[h]) / houses.hx[h]
    )
    ground = p.ground[near]
    on_wall = ground + rng.random(len(near)) * (houses.eave[h] - ground)
    p.surface[near] = np.where(roof, houses.eave[h] + houses.rise[h] * (1 - across), on_wall)
    p.x[near], p.y[near], p.kind[near] = x, y, BUILDING
    p.paint[near] = np.where(roof[:, None], houses.colour[h], [205, 195, 175])
    p.reflectance[near] = np.where(roof, houses.reflectance[h], 0.45)


def _hit_trees(trees: _Trees, p: _Pulses) -> None:
    """Crowns under the pulses not already on a building: first surface the crown's top."""
    t = _square(trees.cell, trees.side, p.x, p.y)
    near = np.flatnonzero(trees.present[t] & (p.kind == GROUND))
    t = t[near]
    inside = 1 - ((p.x[near] - trees.cx[t]) ** 2 + (p.y[near] - trees.cy[t]) ** 2) / trees.radius[t] ** 2
    crown, t = near[inside > 0], t[inside > 0]
    depth = trees.half_height[t] * np.sqrt(inside[inside > 0])
    p.surface[crown] = trees.centre_z[t] + depth
    p.crown_bottom = p.crown_bottom.copy()  # it shared the ground's array until now
    p.crown_bottom[crown] = trees.centre_z[t] - depth
    p.kind[crown] = HIGH_VEGETATION


def _returns(p: _Pulses, rng: np.random.Generator, noise_share: float, colour: bool) -> Cloud:
    """The points of a block's pulses, in order: one return off ground and buildings, one to four in
    a crown, and `noise_share` of the pulses replaced by a single noise return, half of them 20–80 m
    above the first surface (birds, haze), half 3–20 m below the ground (multipath)."""
    count = np.ones(BLOCK, np.int64)
    crowned = np.flatnonzero(p.kind == HIGH_VEGETATION)
    count[crowned] = rng.choice(4, len(crowned), p=TREE_RETURNS) + 1
    noise = np.flatnonzero(rng.random(BLOCK) < noise_share)
    count[noise] = 1
    pulse = np.repeat(np.arange(BLOCK), count)
    start = np.cumsum(count) - count
    number = (np.arange(len(pulse)) - start[pulse] + 1).astype(np.uint8)
    kind, z, under = _in_crowns(p, rng, pulse, number, count[pulse])
    z += rng.standard_normal(len(z), np.float32) * np.float32(0.03)  # ranging noise
    high, noise_at = rng.random(len(noise)) < 0.5, start[noise]
    z[noise_at] = np.where(
        high,
        p.surface[noise] + rng.uniform(20, 80, len(noise)),
        p.ground[noise] - rng.uniform(3, 20, len(noise)),
    )
    kind[noise_at] = np.where(high, HIGH_NOISE, LOW_NOISE)
    soil = (0.5 + 0.5 * np.sin(p.x / 37 + 2 * np.sin(p.y / 23))).astype(np.float32)[pulse]  # grass, bare soil
    built = np.flatnonzero(kind == BUILDING)
    reflectance = 0.3 + 0.15 * soil
    reflectance[kind == HIGH_VEGETATION] = 0.25 / number[kind == HIGH_VEGETATION]  # energy split by returns
    reflectance[built], reflectance[noise_at] = p.reflectance[pulse[built]], 0.05
    intensity = np.clip(reflectance * (1 + 0.15 * rng.standard_normal(len(z), np.float32)), 0, 1) * 65535
    rgb = _paint(rng, kind, soil, under, built, p.paint[pulse[built]]) if colour else (None, None, None)
    return Cloud(
        ORIGIN[0] + p.x[pulse], ORIGIN[1] + p.y[pulse], z, intensity.astype(np.uint16), number,
        count[pulse].astype(np.uint8), kind, p.time[pulse], *rgb,
    )  # fmt: skip


def _in_crowns(
    p: _Pulses, rng: np.random.Generator, pulse: np.ndarray, number: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class and height of each return: the first in a crown just below its top, later ones inside
    it, and the last of several on the ground below with chance `UNDER_CANOPY_GROUND` (returned)."""
    kind, z = p.kind[pulse], p.surface[pulse]
    leaf = np.flatnonzero(kind == HIGH_VEGETATION)
    top, bottom, first = z[leaf], p.crown_bottom[pulse[leaf]], number[leaf] == 1
    z[leaf] = np.where(
        first, top - np.minimum(rng.exponential(0.3, len(leaf)), top - bottom),
        bottom + rng.random(len(leaf)) * (top - bottom),
    )  # fmt: skip
    last = ~first & (number[leaf] == count[leaf])
    under = leaf[last & (rng.random(len(leaf)) < UNDER_CANOPY_GROUND)]
    z[under], kind[under] = p.ground[pulse[under]], GROUND
    return kind, z, under


def _paint(
    rng: np.random.Generator, kind: np.ndarray, soil: np.ndarray, under: np.ndarray, built: np.ndarray,
    building: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Colours as an orthophoto gives them: grass to brown soil (darker under crowns), dark green
    crowns, tile red or concrete grey roofs, light walls; noise takes a grey. 16-bit, as LAS has them."""
    grass, earth = np.array([95, 130, 60], np.float32), np.array([150, 115, 80], np.float32)
    rgb = grass + soil[:, None] * (earth - grass)
    rgb[under] *= 0.6
    rgb[kind == HIGH_VEGETATION] = [45, 85, 40]
    rgb[built] = building
    rgb[(kind == HIGH_NOISE) | (kind == LOW_NOISE)] = 128
    rgb += rng.integers(-10, 11, rgb.shape, np.int8)
    rgb = np.clip(rgb, 0, 255).astype(np.uint16) * np.uint16(257)
    return rgb[:, 0], rgb[:, 1], rgb[:, 2]


def _block(world: _World, seed: int, block: int, pulses: float, noise_share: float, colour: bool) -> Cloud:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, block)))
    p = _fly(world, rng, block, pulses)
    if world.houses is not None:
        _hit_houses(world.houses, rng, p)
    if world.trees is not None:
        _hit_trees(world.trees, p)
    return _returns(p, rng, noise_share, colour)


def default_extent(points: int) -> float:
    """The side of the square that `points` returns cover at `DENSITY` per m², at least `MIN_EXTENT_M`."""
    return max(MIN_EXTENT_M, float(np.sqrt(points / DENSITY)))


def survey_chunks(
    points: int, chunk: int = 2_000_000, seed: int = 0, *, buildings: bool = True, trees: bool = True,
    outliers: float = 0.002, colour: bool = True, extent_m: float | None = None,
) -> Iterator[Cloud]:  # fmt: skip
    """`survey` in pieces of `chunk` points (the last smaller), in acquisition order; the pieces
    concatenate to `survey` of the same arguments for any `chunk`, and only one is held at a time."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 point, not {chunk}")
    world = _world(seed, extent_m or default_extent(points), buildings, trees)
    per_pulse = 1 + _crown_share(world) * float(TREE_RETURNS @ np.arange(4))  # returns, on average
    noise_share = outliers * per_pulse / (1 - outliers + outliers * per_pulse)  # of pulses
    pulses = points / ((1 - noise_share) * per_pulse + noise_share)  # to cover the square once
    pending: list[Cloud] = []
    held, block, made = 0, 0, 0
    while made < points:
        wanted = min(chunk, points - made)
        while held < wanted:
            pending.append(_block(world, seed, block, pulses, noise_share, colour))
            held, block = held + len(pending[-1]), block + 1
        whole = Cloud.concatenate(pending)
        yield whole.select(slice(0, wanted))
        pending, held, made = [whole.select(slice(wanted, None))], held - wanted, made + wanted


def survey(
    points: int, seed: int = 0, *, buildings: bool = True, trees: bool = True, outliers: float = 0.002,
    colour: bool = True, extent_m: float | None = None,
) -> Cloud:  # fmt: skip
    """A drone lidar survey of `points` returns over a square `extent_m` on a side (by default at
    `DENSITY` per m²) south-west corner at `ORIGIN`, with houses and trees if asked and a share
    `outliers` of noise points; `classification` holds the truth."""
    whole = survey_chunks(
        points, max(points, 1), seed, buildings=buildings, trees=trees, outliers=outliers, colour=colour,
        extent_m=extent_m,
    )  # fmt: skip
    return next(whole, None) or _empty(colour)


def bare_ground(points: int, seed: int = 0, *, colour: bool = True, extent_m: float | None = None) -> Cloud:
    """The same rolling terrain with nothing on it and no noise: every point is ground (class 2).

    For the ground classifier's type I error (ground called non-ground, which CSF makes on slopes and
    ridges); its type II error (roofs and crowns called ground) is scored on `survey(...,
    outliers=0)`, whose truth has both. Kept apart so that each failure has a test of its own."""
    return survey(points, seed, buildings=False, trees=False, outliers=0.0, colour=colour, extent_m=extent_m)
