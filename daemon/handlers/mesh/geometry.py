"""What a model's geometry is (the analyze stage's geometric half: the counts glTF Transform reads are
in mesh.mjs) and how far a simplified one strays from it (the lods stage), with trimesh.

Every measure is of the model as drawn: node transforms applied, all primitives as one mesh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError

LARGEST_PLAUSIBLE_M = 100.0
"""A model's longest side above this, read as metres (glTF's unit), is flagged: a chair exported in
millimetres or centimetres arrives 1000× or 100× too large."""

SMALLEST_PLAUSIBLE_M = 0.001
"""... and below this, as a model exported in metres but meant in kilometres, or a unit slip the
other way."""


def load_mesh(glb: Path) -> Any:
    """The GLB's triangles as one `trimesh.Trimesh`, in scene coordinates. Geometry only: Draco or
    meshopt compressed files are not read (measure before compressing)."""
    import trimesh

    scene: Any = trimesh.load(glb, file_type="glb", force="scene", process=False)
    meshes = [g for g in scene.dump() if isinstance(g, trimesh.Trimesh)]  # points and lines drop out
    if not meshes:
        return trimesh.Trimesh()
    return trimesh.util.concatenate(meshes)


def geometry_report(mesh: Any, name: str) -> dict[str, Any]:
    """Size, unit sanity, watertightness, non-manifold and degenerate counts; InputError for a model
    with no triangles (`empty_model`) or with NaN/infinite vertices (`invalid_geometry`)."""
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    if len(faces) == 0:
        raise InputError(f"{name}: the model has no triangles", code="empty_model")
    bad = int((~np.isfinite(vertices)).any(axis=1).sum())
    if bad:
        raise InputError(f"{name}: {bad} vertices are NaN or infinite", code="invalid_geometry")
    low, high = vertices[faces.ravel()].min(axis=0), vertices[faces.ravel()].max(axis=0)
    size = high - low
    diagonal = float(np.linalg.norm(size))
    _, edge_uses = np.unique(np.sort(mesh.edges, axis=1), axis=0, return_counts=True)
    areas = np.asarray(mesh.area_faces)
    degenerate = int((areas <= 1e-12 * max(diagonal, 1e-30) ** 2).sum())
    boundary, non_manifold = int((edge_uses == 1).sum()), int((edge_uses > 2).sum())
    return {
        "size": [round(float(s), 6) for s in size],
        "diagonal": round(diagonal, 6),
        "unit_warning": _unit_warning(float(size.max())),
        "watertight": boundary == 0 and non_manifold == 0,
        "boundary_edges": boundary,
        "non_manifold_edges": non_manifold,
        "degenerate_triangles": degenerate,
        "surface_area": round(float(areas.sum()), 6),
    }


def _unit_warning(longest: float) -> str | None:
    if longest > LARGEST_PLAUSIBLE_M:
        return f"{longest:.4g} m on its longest side: exported in millimetres or centimetres?"
    if longest < SMALLEST_PLAUSIBLE_M:
        return f"{longest:.4g} m on its longest side: a unit slip?"
    return None


def surface_error(
    reference: Any, candidate: Any, *, samples: int = 20_000, seed: int = 0
) -> dict[str, float]:
    """How far `candidate` strays from `reference`, both ways (points sampled on each surface, their
    distance to the other surface), as fractions of the reference's bounding-box diagonal: the
    symmetric Hausdorff distance (the largest) and the chamfer distance (the mean of the two means)."""
    import trimesh

    diagonal = float(np.linalg.norm(reference.extents))
    there = _distances(trimesh, reference, candidate, samples, seed)
    back = _distances(trimesh, candidate, reference, samples, seed + 1)
    return {
        "hausdorff": float(max(there.max(), back.max()) / diagonal),
        "chamfer": float((there.mean() + back.mean()) / 2 / diagonal),
    }


def _distances(trimesh: Any, source: Any, target: Any, samples: int, seed: int) -> Any:
    points, _ = trimesh.sample.sample_surface(source, samples, seed=seed)
    _, distance, _ = trimesh.proximity.closest_point(target, points)
    return np.asarray(distance)
