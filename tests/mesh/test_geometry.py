"""The geometric analysis and the simplification error (mesh/geometry.py) on generated models whose
flaws and sizes are known."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from daemon.errors import InputError
from daemon.handlers.mesh.geometry import geometry_report, load_mesh, surface_error
from daemon.handlers.mesh.tools import run_tool
from tests import meshes


def test_a_closed_sphere_is_watertight_and_plausibly_sized(tmp_path):
    glb = meshes.textured_sphere(tmp_path / "s.glb", segments=24)
    report = geometry_report(load_mesh(glb), "s.glb")
    assert report["size"] == pytest.approx([1.0, 1.0, 1.0], abs=0.01)
    assert report["diagonal"] == pytest.approx(3**0.5, abs=0.02)
    assert (report["watertight"], report["boundary_edges"], report["non_manifold_edges"]) == (True, 0, 0)
    assert report["unit_warning"] is None
    assert report["surface_area"] == pytest.approx(np.pi, rel=0.02)


def test_holes_degenerate_and_non_manifold_triangles_are_counted():
    box = trimesh.creation.box()
    holed = trimesh.Trimesh(box.vertices, box.faces[2:], process=False)  # one side's two triangles gone
    report = geometry_report(holed, "holed")
    assert not report["watertight"] and report["boundary_edges"] == 4
    degenerate = trimesh.Trimesh(box.vertices, np.vstack([box.faces, [[0, 0, 1], [2, 2, 2]]]), process=False)
    assert geometry_report(degenerate, "d")["degenerate_triangles"] == 2
    fin = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]],
                          [[0, 1, 2], [0, 1, 3], [0, 1, 4]], process=False)  # fmt: skip
    assert geometry_report(fin, "fin")["non_manifold_edges"] == 1


def test_a_300_m_chair_is_flagged_as_a_unit_slip(tmp_path):
    chair = trimesh.creation.box(extents=[450.0, 450.0, 900.0])  # a chair in millimetres
    glb = tmp_path / "chair.glb"
    chair.export(glb)
    warning = geometry_report(load_mesh(glb), "chair.glb")["unit_warning"]
    assert warning is not None and "900 m" in warning and "millimetres" in warning


def test_node_transforms_are_applied(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box(), transform=np.diag([3.0, 3.0, 3.0, 1.0]))
    glb = tmp_path / "scaled.glb"
    scene.export(glb)
    assert geometry_report(load_mesh(glb), "scaled")["size"] == pytest.approx([3.0, 3.0, 3.0])


def test_models_without_triangles_or_with_nan_vertices_are_refused():
    box = trimesh.creation.box()
    with pytest.raises(InputError) as empty:
        geometry_report(trimesh.Trimesh(), "empty")
    assert empty.value.code == "empty_model"
    vertices = np.array(box.vertices)
    vertices[3] = np.nan
    with pytest.raises(InputError) as nan:
        geometry_report(trimesh.Trimesh(vertices, box.faces, process=False), "nan")
    assert nan.value.code == "invalid_geometry" and "1 vertices" in nan.value.message


def test_the_error_is_zero_for_the_same_surface_and_grows_along_a_simplification_chain(tmp_path):
    glb = meshes.textured_sphere(tmp_path / "s.glb", segments=64)
    reference = load_mesh(glb)
    same = surface_error(reference, reference)
    assert same["hausdorff"] < 1e-6
    shifted = reference.copy()
    shifted.apply_translation([0.01, 0, 0])
    moved = surface_error(reference, shifted)
    assert moved["hausdorff"] == pytest.approx(0.01 / 3**0.5, rel=0.05)
    errors = []
    for ratio in (0.5, 0.1, 0.02):
        out = tmp_path / f"lod-{ratio}.glb"
        counts = run_tool("lod", {"path": str(glb), "out": str(out), "ratio": ratio})
        assert counts["triangles"] == pytest.approx(ratio * len(reference.faces), rel=0.05)
        errors.append(surface_error(reference, load_mesh(out)))
    print("lod errors:", errors)
    assert [e["hausdorff"] for e in errors] == sorted(e["hausdorff"] for e in errors)
    assert [e["chamfer"] for e in errors] == sorted(e["chamfer"] for e in errors)
    assert 0 < errors[0]["chamfer"] < errors[-1]["chamfer"] < 0.05
