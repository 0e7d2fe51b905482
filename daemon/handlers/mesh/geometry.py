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

    # (materials skipped: decoding a scan's 4096 px textures is most of the time and none of the use)
    scene: Any = trimesh.load(glb, file_type="glb", force="scene", process=False, skip_materials=True)
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
    # each undirected edge as one int64 key: a 1-D sort, several times faster than unique rows
    edges = np.sort(np.asarray(mesh.edges, dtype=np.int64), axis=1)
    _, edge_uses = np.unique(edges[:, 0] * len(vertices) + edges[:, 1], return_counts=True)
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


class Surface:
    """A mesh and the AABB tree of its triangles (libigl), built on first use and then reused: a LOD
    chain measures every level against the same reference. Memory is linear in the triangles (trimesh's
    closest_point gathers every triangle whose box is within a point's nearest-vertex distance: over
    large thin CAD triangles or a far-off part, every triangle for every point, tens of GB)."""

    def __init__(self, mesh: Any) -> None:
        self.mesh = mesh
        self._vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
        self._faces = np.ascontiguousarray(mesh.faces, dtype=np.int64)
        self._tree: Any = None

    def sample(self, count: int, seed: int) -> Any:
        import trimesh

        points, _ = trimesh.sample.sample_surface(self.mesh, count, seed=seed)
        return np.ascontiguousarray(points, dtype=np.float64)

    def distances(self, points: Any) -> Any:
        """Each point's exact distance to this surface."""
        if self._tree is None:
            import igl

            self._tree = igl.AABB()
            self._tree.init(self._vertices, self._faces)
        squared, _, _ = self._tree.squared_distance(self._vertices, self._faces, points)
        return np.sqrt(np.asarray(squared))


def surface_error(
    reference: Any, candidate: Any, *, samples: int = 20_000, seed: int = 0
) -> dict[str, float]:
    """How far `candidate` strays from `reference` (meshes, or `Surface`s to reuse their trees), both
    ways (points sampled on each surface, their distance to the other surface), as fractions of the
    reference's bounding-box diagonal: the symmetric Hausdorff distance (the largest) and the chamfer
    distance (the mean of the two means)."""
    reference = reference if isinstance(reference, Surface) else Surface(reference)
    candidate = candidate if isinstance(candidate, Surface) else Surface(candidate)
    diagonal = float(np.linalg.norm(reference.mesh.extents))
    there = candidate.distances(reference.sample(samples, seed))
    back = reference.distances(candidate.sample(samples, seed + 1))
    return {
        "hausdorff": float(max(there.max(), back.max()) / diagonal),
        "chamfer": float((there.mean() + back.mean()) / 2 / diagonal),
    }
