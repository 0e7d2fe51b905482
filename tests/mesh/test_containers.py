"""The containers a model arrives in, checked before any parser sees them: GLB chunk tables
(mesh/glb.py) and ZIP archives (mesh/archive.py), on real files with the flaw written in."""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path

import pytest

from daemon.errors import InputError
from daemon.handlers.mesh.archive import ArchiveLimits, extract_zip
from daemon.handlers.mesh.glb import check_glb
from tests import meshes


@pytest.fixture(scope="module")
def sphere(tmp_path_factory) -> Path:
    return meshes.textured_sphere(tmp_path_factory.mktemp("models") / "sphere.glb", segments=16)


def patched(source: Path, path: Path, offset: int, value: int) -> Path:
    data = bytearray(source.read_bytes())
    data[offset : offset + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(data))
    return path


def test_a_sound_glb_has_its_json_and_bin_chunks(sphere):
    layout = check_glb(sphere)
    assert layout.json_bytes > 0 and layout.bin_bytes is not None and layout.bin_bytes > 0
    assert 12 + 8 + layout.json_bytes + 8 + layout.bin_bytes == sphere.stat().st_size


def refusal(path: Path) -> InputError:
    with pytest.raises(InputError) as refused:
        check_glb(path)
    return refused.value


def test_glbs_whose_sizes_do_not_add_up_are_refused_with_what_is_wrong(sphere, tmp_path):
    size = sphere.stat().st_size
    json_length = struct.unpack_from("<I", sphere.read_bytes(), 12)[0]
    cases = {
        "cut": (meshes.truncated(sphere, tmp_path / "cut.glb", size - 100), f"declares {size} bytes"),
        "header": (patched(sphere, tmp_path / "header.glb", 8, size + 4), f"declares {size + 4} bytes"),
        "chunk": (patched(sphere, tmp_path / "chunk.glb", 12, size), "past the end"),
        "unaligned": (patched(sphere, tmp_path / "odd.glb", 12, json_length - 1), "not a multiple of 4"),
        "bin first": (patched(sphere, tmp_path / "bin.glb", 16, 0x004E4942), "first chunk is not JSON"),
        "tiny": (meshes.truncated(sphere, tmp_path / "tiny.glb", 7), "shorter than a GLB header"),
    }
    for case, (path, words) in cases.items():
        error = refusal(path)
        assert error.code == "corrupt_model" and words in error.message, (case, error.message)
    old = refusal(patched(sphere, tmp_path / "v1.glb", 4, 1))
    assert old.code == "unsupported_format" and "version 1" in old.message


def write_zip(path: Path, entries: dict[str, bytes], *, link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_a_model_archive_unpacks_with_its_folders(tmp_path, sphere):
    entries = {"scene/model.gltf": b"{}", "scene/tex/a.png": sphere.read_bytes()}
    files = extract_zip(write_zip(tmp_path / "m.zip", entries), tmp_path / "out")
    assert [f.relative_to(tmp_path / "out").as_posix() for f in files] == list(entries)
    assert files[1].read_bytes() == sphere.read_bytes()


@pytest.mark.parametrize(
    ("entries", "link", "words"),
    [
        ({"../evil.txt": b"x"}, None, "outside the archive"),
        ({"/etc/evil.txt": b"x"}, None, "outside the archive"),
        ({"a/../../evil.txt": b"x"}, None, "outside the archive"),
        ({"C:/evil.txt": b"x"}, None, "outside the archive"),
        ({"ok.txt": b"x"}, "tex/link.png", "symbolic link"),
    ],
)
def test_entries_that_escape_the_folder_are_refused_before_they_are_written(tmp_path, entries, link, words):
    archive = write_zip(tmp_path / "slip.zip", entries, link=link)
    with pytest.raises(InputError) as refused:
        extract_zip(archive, tmp_path / "out" / "inner")
    assert refused.value.code == "unsafe_archive" and words in refused.value.message
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_a_zip_bomb_stops_at_its_ratio_and_a_large_archive_at_the_total(tmp_path):
    bomb = write_zip(tmp_path / "bomb.zip", {"model.bin": bytes(64 << 20)})  # 64 MiB of zeros: ~1000×
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(InputError) as refused:
        extract_zip(bomb, tmp_path / "out")
    assert refused.value.code == "archive_too_large" and "zip bomb" in refused.value.message
    # stopped within a piece of 200× its compressed size, not at the 64 MiB its header declares
    compressed = zipfile.ZipFile(bomb).getinfo("model.bin").compress_size
    assert (tmp_path / "out" / "model.bin").stat().st_size <= 200 * compressed + (1 << 20) < 64 << 20
    noise = write_zip(tmp_path / "big.zip", {f"{i}.bin": bytes(range(256)) * 4096 for i in range(3)})
    with pytest.raises(InputError) as too_big:
        extract_zip(noise, tmp_path / "out2", ArchiveLimits(max_total_bytes=2 << 20, max_ratio=1e9))
    assert too_big.value.code == "archive_too_large" and str(2 << 20) in too_big.value.message
    with pytest.raises(InputError) as too_many:
        extract_zip(noise, tmp_path / "out3", ArchiveLimits(max_members=2))
    assert too_many.value.code == "archive_too_large" and "3 entries" in too_many.value.message


def test_a_file_that_is_not_a_zip_is_a_corrupt_archive(tmp_path, sphere):
    with pytest.raises(InputError) as refused:
        extract_zip(sphere, tmp_path / "out")
    assert refused.value.code == "corrupt_archive"
