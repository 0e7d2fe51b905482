"""The read stage (mesh/read.py) on real files of every accepted format, each turned into a GLB that
the Khronos validator passes and that holds the triangles sent; and the inputs it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from daemon.errors import InputError
from daemon.handlers.mesh.geometry import load_mesh
from daemon.handlers.mesh.read import read_model
from daemon.handlers.mesh.tools import run_tool
from tests import meshes


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return meshes.sphere_mesh(segments=16)


def uploads(folder: Path, sphere: trimesh.Trimesh) -> dict[str, Path]:
    """The sphere in every format a customer may send, named so the name never tells the format."""
    folder.mkdir(exist_ok=True)
    files = {
        "glb": folder / "a.bin",
        "gltf-zip": meshes.zipped(folder / "b.bin", meshes.gltf_files(sphere)),
        "obj-zip": meshes.zipped(folder / "c.bin", meshes.obj_files(sphere)),
        "obj": folder / "d.bin",
        "ply": folder / "e.bin",
        "stl": folder / "f.bin",
        "stl-ascii": folder / "g.bin",
    }
    files["glb"].write_bytes(sphere.export(file_type="glb"))
    files["obj"].write_bytes(trimesh.exchange.obj.export_obj(sphere, include_texture=False).encode())
    files["ply"].write_bytes(sphere.export(file_type="ply"))
    files["stl"].write_bytes(sphere.export(file_type="stl"))
    files["stl-ascii"].write_bytes(sphere.export(file_type="stl_ascii").encode())
    return files


def test_every_accepted_format_becomes_a_valid_glb_with_the_triangles_sent(sphere, tmp_path):
    expected = {
        "glb": "glb", "gltf-zip": "gltf", "obj-zip": "obj", "obj": "obj", "ply": "ply", "stl": "stl",
        "stl-ascii": "stl",
    }  # fmt: skip
    textured = {"glb", "gltf-zip", "obj-zip"}
    for case, path in uploads(tmp_path / "in", sphere).items():
        model = read_model(path, tmp_path / case)
        assert (model.source_format, model.zipped) == (expected[case], case.endswith("zip"))
        assert model.warnings == []
        report = run_tool("validate", {"path": str(model.glb)})
        assert report["errors"] == 0, (case, report["messages"])
        analysis = run_tool("analyze", {"path": str(model.glb)})
        assert analysis["triangles"] == len(sphere.faces), case
        assert (len(analysis["textures"]) == 1) == (case in textured), (case, analysis["textures"])


@pytest.mark.parametrize("method", ["draco", "meshopt"])
def test_a_compressed_upload_is_decoded_to_the_geometry_it_carries(sphere, tmp_path, method):
    # Given the sphere uploaded Draco- or meshopt-compressed (meshopt with quantized positions)
    plain = tmp_path / "plain.glb"
    plain.write_bytes(sphere.export(file_type="glb"))
    upload = tmp_path / "upload.glb"
    run_tool("compress", {"path": str(plain), "out": str(upload), "method": method})
    assert method in " ".join(run_tool("analyze", {"path": str(upload)})["extensions_used"]).lower()
    # When it is read, Then the source holds plain float geometry where the sphere is
    model = read_model(upload, tmp_path / "read")
    facts = run_tool("analyze", {"path": str(model.glb)})
    assert facts["extensions_used"] == [] and facts["triangles"] == len(sphere.faces)
    assert np.allclose(load_mesh(model.glb).bounds, sphere.bounds, atol=2e-3)


def test_an_obj_whose_texture_is_missing_is_read_with_a_warning(sphere, tmp_path):
    upload = meshes.zipped(tmp_path / "obj.zip", meshes.obj_files(sphere, with_texture=False))
    model = read_model(upload, tmp_path / "work")
    [warning] = model.warnings
    assert "model.mtl names texture" in warning and "lacks" in warning
    analysis = run_tool("analyze", {"path": str(model.glb)})
    assert analysis["triangles"] == len(sphere.faces) and analysis["textures"] == []


@pytest.mark.parametrize(
    "uri", ["http://169.254.169.254/latest/meta-data", "file:///etc/passwd", "../outside.bin", "//host/x.bin"]
)
def test_a_gltf_naming_anything_outside_its_upload_is_refused_unfetched(sphere, tmp_path, uri):
    upload = meshes.zipped(tmp_path / "g.zip", meshes.gltf_files(sphere, buffer_uri=uri))
    (tmp_path / "work").mkdir()
    with pytest.raises(InputError) as refused:
        read_model(upload, tmp_path / "work" / "read")
    assert refused.value.code == "external_reference" and uri[:20] in refused.value.message


def test_what_is_not_one_readable_model_is_named(sphere, tmp_path):
    html = tmp_path / "page"
    html.write_bytes(b"<!doctype html><html><body>404</body></html>")
    fbx = tmp_path / "fbx"
    fbx.write_bytes(b"Kaydara FBX Binary  \x00\x1a\x00" + bytes(200))
    two = meshes.zipped(tmp_path / "two.zip", {"a.glb": sphere.export(file_type="glb"), "b.stl": b"solid x"})
    none = meshes.zipped(tmp_path / "none.zip", {"readme.txt": b"hello"})
    cases = {
        html: ("not_a_model", "an HTML page"),
        fbx: ("corrupt_model", "fbx: not a readable FBX ("),
        two: ("ambiguous_input", "found 2: a.glb, b.stl"),
        none: ("not_a_model", "found 0"),
    }
    for path, (code, words) in cases.items():
        with pytest.raises(InputError) as refused:
            read_model(path, tmp_path / "work")
        assert refused.value.code == code and words in refused.value.message, refused.value.message
