"""Public sample models (tests/data/mesh, sources and licences in its README) through the read stage:
a zipped glTF with its texture file, an FBX exported on someone's Windows machine (texture paths
`D:\\projects\\…`) zipped with most of its textures, and an FBX whose texture is embedded as TGA."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from daemon.handlers.mesh.read import read_model
from daemon.handlers.mesh.tools import run_tool

DATA = Path(__file__).resolve().parents[1] / "data" / "mesh"


def read(name: str, tmp_path: Path, source: Path | None = None) -> tuple[object, dict, dict]:
    model = read_model(source or DATA / name, tmp_path / "read")
    path = {"path": str(model.glb)}
    return model, run_tool("analyze", path), run_tool("validate", path)


def textures(analysis: dict) -> list[tuple[str, int, int]]:
    return sorted((t["mime_type"], t["width"], t["height"]) for t in analysis["textures"])


def test_a_zipped_gltf_with_its_texture_file(tmp_path):
    model, analysis, report = read("spider_gltf.zip", tmp_path)
    assert (model.source_format, model.zipped, model.warnings) == ("gltf", True, [])
    assert (analysis["triangles"], analysis["vertices"]) == (500, 1000)
    assert textures(analysis) == [("image/png", 128, 128)] and report["errors"] == 0


def test_an_fbx_finds_its_textures_in_the_archive_by_name_and_warns_about_the_missing_one(tmp_path):
    # Given an FBX naming D:\projects\assimp_int\test\models\OBJ\*.jpg, zipped with three of the four
    # under textures/
    model, analysis, report = read("spider_fbx.zip", tmp_path)
    # Then the three are found by file name, the fourth is a warning and a neutral placeholder
    assert (model.source_format, model.zipped) == ("fbx", True)
    assert model.warnings == ["spider.fbx names texture 'drkwood2.jpg', which the upload lacks: left out"]
    found = [("image/jpeg", 128, 128), ("image/jpeg", 249, 250), ("image/jpeg", 250, 250)]
    assert textures(analysis) == [*found, ("image/png", 1, 1)]
    assert (analysis["triangles"], analysis["materials"]) == (1368, 4) and report["errors"] == 0


def test_a_lone_fbx_never_reads_files_beside_it(tmp_path):
    # Given the same FBX uploaded alone, its textures lying in the folder it was downloaded to
    folder = tmp_path / "download"
    shutil.unpack_archive(DATA / "spider_fbx.zip", folder)
    for texture in (folder / "textures").iterdir():
        texture.rename(folder / texture.name)
    # When it is read, Then nothing outside the upload is taken: every texture is a warning
    model, analysis, report = read("", tmp_path, folder / "spider.fbx")
    assert len(model.warnings) == 4 and all("which the upload lacks" in w for w in model.warnings)
    assert textures(analysis) == [("image/png", 1, 1)] * 4 and report["errors"] == 0


def test_an_embedded_tga_texture_becomes_a_png(tmp_path):
    model, analysis, report = read("box_embedded_tga.fbx", tmp_path)
    assert (model.source_format, model.zipped, model.warnings) == ("fbx", False, [])
    assert textures(analysis) == [("image/png", 256, 256)]
    assert (analysis["triangles"], report["errors"]) == (12, 0)


@pytest.mark.parametrize("broken", [b"Kaydara FBX Binary  \x00\x1a\x00", b"; FBX 7.4.0 project file\n{{{"])
def test_a_broken_fbx_is_a_corrupt_model(tmp_path, broken):
    from daemon.errors import InputError

    path = tmp_path / "broken.fbx"
    path.write_bytes(broken + bytes(300))
    with pytest.raises(InputError) as refused:
        read_model(path, tmp_path / "read")
    assert refused.value.code == "corrupt_model" and "broken.fbx: not a readable FBX" in refused.value.message
