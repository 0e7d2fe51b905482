"""Cameras as they are: photos of one device share one set of intrinsics in SfM, grouped by the device
their EXIF names and by size; the images stage reads the device (and the capture time: a walk in input
order is matched along it) before it drops the metadata."""

from __future__ import annotations

import pycolmap
import pytest
from PIL import ExifTags, Image

from daemon.handlers.splat.inputs import ImageOptions, device_key, prepare_images, taken_at
from daemon.handlers.splat.sfm_cameras import camera_groups, image_sizes, import_cameras
from daemon.handlers.splat.sfm_matching import choose_matcher, is_ordered_walk
from daemon.handlers.splat.sfm_options import SfmOptions
from tests.splat.test_inputs import encode, scene

NAMES = ["a", "b", "c", "d", "e"]
LANDSCAPE, PORTRAIT = (640, 480), (480, 640)


@pytest.mark.parametrize(
    ("grouping", "sizes", "devices", "groups"),
    [
        # no EXIF, one size: one camera (COLMAP's AUTO gave each photo its own)
        ("auto", [LANDSCAPE] * 5, [None] * 5, [NAMES]),
        # no EXIF, portrait and landscape: one camera each
        (
            "auto",
            [LANDSCAPE, PORTRAIT, LANDSCAPE, PORTRAIT, LANDSCAPE],
            [None] * 5,
            [["a", "c", "e"], ["b", "d"]],
        ),
        # two phones of one size, told apart by their EXIF
        (
            "auto",
            [LANDSCAPE] * 5,
            ["P 4mm", "Q 6mm", "P 4mm", None, "Q 6mm"],
            [["a", "c"], ["b", "e"], ["d"]],
        ),
        # one camera whatever the EXIF says, per size (two sizes cannot share intrinsics in pixels)
        ("single", [LANDSCAPE] * 5, ["P 4mm", "Q 6mm", None, None, None], [NAMES]),
        (
            "single",
            [LANDSCAPE, PORTRAIT, LANDSCAPE, PORTRAIT, LANDSCAPE],
            ["P 4mm", "Q 6mm", None, None, None],
            [["a", "c", "e"], ["b", "d"]],
        ),
        ("per_image", [LANDSCAPE] * 5, [None] * 5, [[n] for n in NAMES]),
    ],
    ids=["one-size", "two-sizes", "two-devices", "single", "single-two-sizes", "per-image"],
)
def test_images_are_grouped_into_cameras(grouping, sizes, devices, groups):
    assert camera_groups(NAMES, sizes, devices, grouping) == groups


def photo_with_exif(make: str | None, model: str | None, focal: float | None) -> Image.Image:
    image = scene(1)
    exif = image.getexif()
    if make is not None:
        exif[ExifTags.Base.Make] = make
    if model is not None:
        exif[ExifTags.Base.Model] = model
    if focal is not None:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.FocalLength] = focal
    image.info["exif"] = exif.tobytes()
    return image


@pytest.mark.parametrize(
    ("make", "model", "focal", "key"),
    [
        ("Apple", "iPhone 13", 5.1, "Apple iPhone 13 5.10mm"),
        ("Apple\x00", "iPhone 13\x00", 5.1, "Apple iPhone 13 5.10mm"),  # NUL-padded, as some cameras write
        (None, None, 4.0, "? ? 4.00mm"),
        ("Apple", "iPhone 13", None, None),  # a focal length is what fixes the intrinsics
        (None, None, None, None),
    ],
)
def test_the_device_key_comes_from_the_exif(tmp_path, make, model, focal, key):
    # Given a JPEG written with that EXIF, decoded again as the images stage reads it
    path = tmp_path / "p.jpg"
    path.write_bytes(
        encode(photo_with_exif(make, model, focal), exif=photo_with_exif(make, model, focal).info["exif"])
    )
    with Image.open(path) as decoded:
        assert device_key(decoded.getexif()) == key


def test_the_images_stage_records_each_photos_device_and_drops_the_metadata(tmp_path):
    # Given photos from two phones and one without EXIF
    files = []
    for index, (make, focal) in enumerate([("Apple", 5.1), ("Google", 6.8), (None, None), ("Apple", 5.1)]):
        image = scene(index + 3)
        exif_image = photo_with_exif(make, "X", focal) if make else image
        path = tmp_path / "in" / f"{index}.jpg"
        path.parent.mkdir(exist_ok=True)
        extra = {"exif": exif_image.info["exif"]} if make else {}
        path.write_bytes(encode(image, **extra))
        files.append(path)
    # When they are prepared
    prepared = prepare_images(files, tmp_path / "out", ImageOptions(min_images=3))
    # Then each image's device is known, and the written JPEGs carry no EXIF
    assert prepared.devices == ["Apple X 5.10mm", "Google X 6.80mm", None, "Apple X 5.10mm"]
    for path in prepared.paths:
        with Image.open(path) as written:
            assert not written.getexif()


@pytest.mark.parametrize(("grouping", "cameras"), [("auto", 2), ("single", 2), ("per_image", 6)])
def test_the_database_gets_one_camera_per_group(tmp_path, grouping, cameras):
    # Given six staged photos, four landscape and two portrait, without EXIF
    folder = tmp_path / "images"
    folder.mkdir()
    names = []
    for index in range(6):
        size = (320, 240) if index < 4 else (240, 320)
        name = f"{index:05d}_p.jpg"
        scene(index, size).save(folder / name)
        names.append(name)
    groups = camera_groups(names, image_sizes(folder, names), [None] * 6, grouping)
    # When they are registered in a COLMAP database, then their features extracted
    database = tmp_path / "database.db"
    pycolmap.Database.open(database).close()
    import_cameras(pycolmap, database, folder, groups)
    pycolmap.extract_features(database, folder, image_names=names)
    # Then the database holds one camera per group, and each image is on its group's camera
    with pycolmap.Database.open(database) as db:
        assert db.num_cameras() == cameras
        camera_of = {image.name: image.camera_id for image in db.read_all_images()}
    for group in groups:
        assert len({camera_of[name] for name in group}) == 1


@pytest.mark.parametrize(
    ("sources", "taken", "ordered"),
    [
        (["IMG_0001.jpg", "IMG_0002.jpg", "IMG_0010.jpg"], None, True),  # numbered as shot, gaps allowed
        (["0001.jpg", "0003.jpg", "0002.jpg"], None, False),
        (["front.jpg", "back.jpg", "side.jpg"], None, False),  # no numbers: nothing to go by
        (["IMG_0001.jpg", "IMG_0002.jpg"], None, False),  # two photos are no walk
        # capture times win over names when every photo has one
        (
            ["c.jpg", "a.jpg", "b.jpg"],
            ["2026:12:01 10:00:00", "2026:12:01 10:00:05", "2026:12:01 10:01:00"],
            True,
        ),
        (
            ["1.jpg", "2.jpg", "3.jpg"],
            ["2026:12:01 10:00:05", "2026:12:01 10:00:00", "2026:12:01 10:01:00"],
            False,
        ),
        (["1.jpg", "2.jpg", "3.jpg"], ["2026:12:01 10:00:00"] * 3, False),  # a burst: says nothing
        (["1.jpg", "2.jpg", "3.jpg"], ["2026:12:01 10:00:00", None, "2026:12:01 10:01:00"], True),  # names
    ],
)
def test_photos_taken_in_input_order_are_a_walk(sources, taken, ordered):
    assert is_ordered_walk(sources, taken) is ordered


def test_a_walk_is_matched_along_its_order_and_other_sets_by_their_size():
    walk = SfmOptions(ordered=True)
    assert [choose_matcher(n, walk) for n in (10, 500)] == ["sequential_loop", "sequential_loop"]
    assert [choose_matcher(n, SfmOptions()) for n in (10, 500)] == ["exhaustive", "retrieval"]


@pytest.mark.parametrize(
    ("when", "subsec", "taken"),
    [
        ("2026:12:01 10:00:05", None, "2026:12:01 10:00:05"),
        ("2026:12:01 10:00:05", "250", "2026:12:01 10:00:05.250"),
        ("garbage", None, None),
        (None, None, None),
    ],
)
def test_the_capture_time_comes_from_the_exif(tmp_path, when, subsec, taken):
    image = scene(2)
    exif = image.getexif()
    details = exif.get_ifd(ExifTags.IFD.Exif)
    if when is not None:
        details[ExifTags.Base.DateTimeOriginal] = when
    if subsec is not None:
        details[ExifTags.Base.SubsecTimeOriginal] = subsec
    path = tmp_path / "p.jpg"
    path.write_bytes(encode(image, exif=exif.tobytes()))
    with Image.open(path) as decoded:
        assert taken_at(decoded.getexif()) == taken
