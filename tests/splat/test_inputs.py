"""daemon.handlers.splat.inputs: customer photos → a clean, upright, deduplicated sRGB JPEG set.

Every image is generated here with Pillow; nothing is read from disk but what the test wrote.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFile, ImageFilter

from daemon.errors import InputError
from daemon.handlers.splat import inputs
from daemon.handlers.splat.inputs import ImageOptions, PreparedImages, prepare_images

ONE = ImageOptions(min_images=1)
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
SRGB_ICC: bytes = inputs._SRGB.tobytes()


# --- image makers ------------------------------------------------------------------------------------


def scene(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A textured RGB picture (random shapes); different seeds are different scenes."""
    rnd = random.Random(seed)
    w, h = size
    image = Image.new("RGB", size, tuple(rnd.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(120):
        x, y, r = rnd.randrange(w), rnd.randrange(h), rnd.randrange(w // 100 + 2, w // 9)
        box = [x, y, x + r, y + r * rnd.uniform(0.3, 2)]
        fill = tuple(rnd.randrange(256) for _ in range(3))
        (draw.ellipse if rnd.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return image.filter(ImageFilter.GaussianBlur(1))


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def photos(tmp_path: Path, count: int, *, first_seed: int = 0) -> list[Path]:
    return [
        write(tmp_path / f"IMG_{first_seed + i}.jpg", encode(scene(first_seed + i))) for i in range(count)
    ]


def quadrants(size: tuple[int, int] = (200, 120)) -> Image.Image:
    """Upright reference: red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    w, h = size
    image = Image.new("RGB", size, RED)
    image.paste(GREEN, (w // 2, 0, w, h // 2))
    image.paste(BLUE, (0, h // 2, w // 2, h))
    image.paste(YELLOW, (w // 2, h // 2, w, h))
    return image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width x height RGB pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to claim width x height."""
    data = bytearray(encode(scene(1, (64, 64))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def pixel(path: Path, xy: tuple[int, int]) -> tuple[int, ...]:
    with Image.open(path) as image:
        return tuple(image.convert("RGB").getpixel(xy))  # type: ignore[arg-type]


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 24) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# --- happy path ----------------------------------------------------------------------------------------


def test_usable_photos_come_out_numbered_in_input_order(tmp_path: Path) -> None:
    # Given six different photos, JPEG and PNG, landscape and portrait
    src = tmp_path / "in"
    src.mkdir()
    files = photos(src, 4) + [
        write(src / "portrait.png", encode(scene(10, (300, 400)), "PNG")),
        write(src / "big.jpg", encode(scene(11, (2400, 1800)))),
    ]
    # When they are prepared
    result = prepare_images(files, tmp_path / "out", ImageOptions())
    # Then each is a numbered sRGB JPEG without metadata, in input order, with its size recorded
    assert [p.name for p in result.paths] == [f"{n:04d}.jpg" for n in range(1, 7)]
    assert result.sources == [f.name for f in files]
    assert result.sizes == [(480, 360)] * 4 + [(300, 400), (1600, 1200)]
    assert result.rejected == [] and result.duplicates == []
    for path, size in zip(result.paths, result.sizes, strict=True):
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", size)
            assert not image.getexif() and "icc_profile" not in image.info
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in result.paths]


def test_type_comes_from_content_not_name(tmp_path: Path) -> None:
    # Given a PNG named .jpg, a JPEG named .png and text named .jpg
    files = [
        write(tmp_path / "a.jpg", encode(scene(1), "PNG")),
        write(tmp_path / "b.png", encode(scene(2))),
        write(tmp_path / "c.jpg", b"just some notes, not a photo\n" * 10),
    ]
    # When they are prepared
    result = prepare_images(files, tmp_path / "out", ONE)
    # Then the two images are used and the text is refused as not an image
    assert result.sources == ["a.jpg", "b.png"]
    assert [(r.name, r.code) for r in result.rejected] == [("c.jpg", "not_an_image")]


def test_multi_picture_jpeg_is_read_as_its_primary_image(tmp_path: Path) -> None:
    # Given an MPO file (a JPEG with extra frames, as phones write for gain maps and depth)
    buf = io.BytesIO()
    scene(5, (2000, 1500)).save(buf, "MPO", save_all=True, append_images=[scene(6, (500, 375))])
    photo = write(tmp_path / "IMG_5.jpg", buf.getvalue())
    # When it is prepared, then the first frame comes out, downscaled
    result = prepare_images([photo], tmp_path / "out", ONE)
    assert result.sizes == [(1600, 1200)]


@pytest.mark.parametrize(
    ("size", "expected"),
    [((3000, 1000), (1600, 533)), ((1000, 3000), (533, 1600)), ((800, 600), (800, 600))],
)
def test_downscale_caps_the_long_side_and_keeps_the_aspect(
    tmp_path: Path, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    # Given a photo of some size
    photo = write(tmp_path / "p.jpg", encode(scene(3, size)))
    # When it is prepared with the default 1600 px cap
    result = prepare_images([photo], tmp_path / "out", ONE)
    # Then the long side is at most 1600, the aspect is kept, and small photos are not upscaled
    assert result.sizes == [expected]
    with Image.open(result.paths[0]) as image:
        assert image.size == expected


# --- orientation ---------------------------------------------------------------------------------------

# The stored pixels for each EXIF orientation: the inverse of the transpose that makes them upright.
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(tmp_path: Path, orientation: int, fmt: str) -> None:
    # Given a photo stored sideways/mirrored with the EXIF tag that says how to show it
    upright = quadrants()
    method = STORED[orientation]
    stored = upright if method is None else upright.transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo = write(tmp_path / f"o{orientation}", encode(stored, fmt, exif=exif.tobytes()))
    # When it is prepared
    result = prepare_images([photo], tmp_path / "out", ONE)
    # Then the output is the upright picture, with the tag gone
    assert result.sizes == [(200, 120)]
    out = result.paths[0]
    for xy, colour in (((10, 10), RED), ((189, 10), GREEN), ((10, 109), BLUE), ((189, 109), YELLOW)):
        assert close_to(pixel(out, xy), colour), (xy, pixel(out, xy), colour)
    with Image.open(out) as image:
        assert image.getexif().get(0x0112) is None


# --- pixel formats -------------------------------------------------------------------------------------


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    # Given a 16-bit greyscale PNG at 40000/65535 (about 156/255)
    grey16 = Image.new("I;16", (100, 80), 40000)
    photo = write(tmp_path / "grey16.png", encode(grey16, "PNG"))
    # When it is prepared
    result = prepare_images([photo], tmp_path / "out", ONE)
    # Then it is mid-grey RGB, not clipped to white
    assert close_to(pixel(result.paths[0], (50, 40)), (156, 156, 156), 3)


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("cmyk.jpg", lambda: encode(Image.new("CMYK", (100, 80), (0, 255, 255, 0))), RED),
        ("rgba.png", lambda: encode(Image.new("RGBA", (100, 80), (255, 0, 0, 0)), "PNG"), (0, 0, 0)),
        ("half.png", lambda: encode(Image.new("RGBA", (100, 80), (255, 255, 255, 128)), "PNG"), (128,) * 3),
        ("la.png", lambda: encode(Image.new("LA", (100, 80), (200, 0)), "PNG"), (0, 0, 0)),
        ("p.png", lambda: encode(Image.new("P", (100, 80), 3), "PNG", transparency=3), (0, 0, 0)),
        ("l.png", lambda: encode(Image.new("L", (100, 80), 77), "PNG"), (77, 77, 77)),
        ("srgb.png", lambda: encode(Image.new("RGB", (100, 80), BLUE), "PNG", icc_profile=SRGB_ICC), BLUE),
    ],
)
def test_every_pixel_format_becomes_rgb_with_alpha_on_black(
    tmp_path: Path, name: str, make: object, expected: tuple[int, int, int]
) -> None:
    # Given an image in some mode (CMYK, alpha, grey+alpha, palette with a transparent entry, ICC-tagged)
    photo = write(tmp_path / name, make())  # type: ignore[operator]
    # When it is prepared
    result = prepare_images([photo], tmp_path / "out", ONE)
    # Then it is plain RGB, transparent pixels composited onto black
    assert close_to(pixel(result.paths[0], (50, 40)), expected, 4)


# --- rejections ----------------------------------------------------------------------------------------


def test_each_bad_file_is_rejected_with_its_code_and_the_job_goes_on(tmp_path: Path) -> None:
    # Given five good photos and one file for each way a file can be unusable
    good = photos(tmp_path, 5)
    full = encode(scene(20))
    bad = {
        "empty.jpg": (b"", "empty_file"),
        "notes.txt": (b"shopping list\n", "not_an_image"),
        "IMG_cut.jpg": (full[: len(full) * 2 // 3], "corrupt_image"),
        "IMG_cut.png": (encode(scene(21), "PNG")[:-3000], "corrupt_image"),
        "garbled.png": (b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "corrupt_image"),
        "bomb.png": (png_claiming(100_000, 100_000), "image_too_large"),
        "tiny.jpg": (encode(scene(22, (48, 200))), "image_too_small"),
        "anim.gif": (encode(scene(23), "GIF"), "unsupported_format"),
        "photo.webp": (encode(scene(24), "WEBP"), "unsupported_format"),
        "walk.mp4": (b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2avc1mp41" + b"\0" * 64, "not_an_image"),
    }
    files = good[:2] + [write(tmp_path / name, data) for name, (data, _) in bad.items()] + good[2:]
    # When they are prepared
    result = prepare_images(files, tmp_path / "out", ImageOptions())
    # Then the good ones are kept and each bad one is reported by name with its code and a reason
    assert result.sources == [p.name for p in good]
    assert [(r.name, r.code) for r in result.rejected] == [(name, code) for name, (_, code) in bad.items()]
    for rejected in result.rejected:
        assert rejected.reason and str(rejected).startswith(f"{rejected.name} ({rejected.code}: ")
    # and a video among photos says which kind takes it
    assert "send a video as a splat_video job" in result.rejected[-1].reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_too_few_usable_images_lists_every_rejected_file(tmp_path: Path) -> None:
    # Given three good photos, a truncated one, a text file and a duplicate
    good = photos(tmp_path, 3)
    cut = encode(scene(30))
    files = [
        *good,
        write(tmp_path / "IMG_4.jpg", cut[: len(cut) // 2]),
        write(tmp_path / "notes.txt", b"hello"),
        write(tmp_path / "again.jpg", good[0].read_bytes()),
    ]
    # When they are prepared with the default minimum of five
    with pytest.raises(InputError) as caught:
        prepare_images(files, tmp_path / "out", ImageOptions())
    # Then the job fails with a message that says how many were usable and why each file was refused
    error = caught.value
    assert error.code == "too_few_images" and not error.retryable
    assert error.message.startswith("3 usable images, need ≥ 5; rejected: IMG_4.jpg (corrupt_image: ")
    assert "notes.txt (not_an_image: " in error.message
    assert error.message.endswith("; duplicates dropped: again.jpg")


def test_no_files_at_all_is_its_own_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        prepare_images([], tmp_path / "out", ImageOptions())
    assert caught.value.code == "no_images"


def test_all_files_bad_is_too_few_images_not_no_images(tmp_path: Path) -> None:
    files = [write(tmp_path / "a.txt", b"a"), write(tmp_path / "b.jpg", b"")]
    with pytest.raises(InputError) as caught:
        prepare_images(files, tmp_path / "out", ImageOptions())
    assert caught.value.code == "too_few_images"
    assert caught.value.message.startswith("0 usable images, need ≥ 5; rejected: a.txt (not_an_image: ")
    assert "b.jpg (empty_file: " in caught.value.message


# --- decompression bombs -------------------------------------------------------------------------------


def test_decompression_bombs_are_refused_from_the_header_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given tiny files whose headers claim huge images: past Pillow's own limit, and past only ours
    files = [
        write(tmp_path / "bomb.png", png_claiming(100_000, 100_000)),
        write(tmp_path / "bomb.jpg", jpeg_claiming(65_000, 65_000)),
        write(tmp_path / "warn.png", png_claiming(10_000, 10_000)),  # 100 Mpx: Pillow only warns
        write(tmp_path / "big.png", png_claiming(3_000, 3_000)),  # 9 Mpx: over our 4 Mpx below
    ]
    assert all(f.stat().st_size < 2_000 for f in files)
    # ... and a decoder that fails the test if it is ever asked for pixels
    decoded: list[str] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append("decoded"))
    # When they are prepared
    with pytest.raises(InputError) as caught:
        prepare_images(files, tmp_path / "out", ImageOptions(max_pixels=4_000_000))
    # Then every one is refused as too large, from its header: not one pixel was decoded
    assert decoded == []
    for name in ("bomb.png", "bomb.jpg", "warn.png", "big.png"):
        assert f"{name} (image_too_large: " in caught.value.message
    assert "3000x3000 is over the 4,000,000-pixel limit" in caught.value.message


# --- duplicates ----------------------------------------------------------------------------------------


def test_exact_and_near_duplicates_are_dropped_but_close_views_are_kept(tmp_path: Path) -> None:
    # Given one wide scene seen through a 1000x750 window, and copies of the first view
    world = scene(40, (1400, 1000))

    def view(shift: float) -> Image.Image:
        x0 = 100 + int(shift * 1000)
        return world.crop((x0, 100, x0 + 1000, 850))

    first = encode(view(0.0))
    files = [
        write(tmp_path / "view0.jpg", first),
        write(tmp_path / "copy.jpg", first),  # the same bytes again
        write(tmp_path / "export.jpg", encode(view(0.0).resize((600, 450)), quality=70)),  # re-exported
        write(tmp_path / "export.png", encode(view(0.0), "PNG")),  # same photo, other format
        write(tmp_path / "view1.jpg", encode(view(0.01))),  # camera moved by 1 % of the frame
        write(tmp_path / "view3.jpg", encode(view(0.03))),
        write(tmp_path / "other.jpg", encode(scene(41, (1000, 750)))),
    ]
    # When they are prepared
    result = prepare_images(files, tmp_path / "out", ONE)
    # Then the first occurrence is kept, copies are dropped, and every different view is kept
    assert result.sources == ["view0.jpg", "view1.jpg", "view3.jpg", "other.jpg"]
    assert result.duplicates == ["copy.jpg", "export.jpg", "export.png"]
    assert [p.name for p in result.paths] == ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg"]


def test_a_rotated_copy_of_the_same_photo_is_a_duplicate(tmp_path: Path) -> None:
    # Given a photo and the same photo stored rotated with orientation 6
    upright = scene(50)
    exif = Image.Exif()
    exif[0x0112] = 6
    files = [
        write(tmp_path / "a.jpg", encode(upright)),
        write(tmp_path / "b.jpg", encode(upright.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())),
    ]
    # When they are prepared, then the second is recognised as the same picture once upright
    result = prepare_images(files, tmp_path / "out", ONE)
    assert result.duplicates == ["b.jpg"]


# --- HEIC ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not inputs.HEIF_SUPPORTED, reason="pillow-heif is not installed")
def test_heic_photos_are_read(tmp_path: Path) -> None:
    # Given an iPhone-style HEIC photo (encoded here with pillow-heif) and a JPEG
    files = [
        write(tmp_path / "IMG_0001.HEIC", encode(scene(60, (640, 480)), "HEIF", quality=90)),
        write(tmp_path / "IMG_0002.jpg", encode(scene(61))),
    ]
    assert files[0].read_bytes()[4:12] == b"ftypheic"
    # When they are prepared
    result = prepare_images(files, tmp_path / "out", ONE)
    # Then the HEIC comes out as a JPEG like any other
    assert result.sources == ["IMG_0001.HEIC", "IMG_0002.jpg"] and result.sizes[0] == (640, 480)


def test_heic_is_refused_by_name_when_pillow_heif_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a HEIC file (just its header is enough) on a worker without pillow-heif
    monkeypatch.setattr(inputs, "HEIF_SUPPORTED", False)
    heic = write(tmp_path / "IMG_0001.HEIC", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 100)
    good = write(tmp_path / "ok.jpg", encode(scene(62)))
    # When they are prepared, then the HEIC is rejected as unsupported, saying why
    result = prepare_images([heic, good], tmp_path / "out", ONE)
    assert [(r.name, r.code) for r in result.rejected] == [("IMG_0001.HEIC", "unsupported_format")]
    assert "pillow-heif" in result.rejected[0].reason


# --- determinism, progress, process-wide flags -------------------------------------------------------


def run_twice(files: list[Path], tmp_path: Path) -> tuple[PreparedImages, PreparedImages]:
    return (
        prepare_images(files, tmp_path / "one", ONE),
        prepare_images(files, tmp_path / "two", ONE),
    )


def test_same_inputs_give_the_same_names_and_bytes(tmp_path: Path) -> None:
    # Given a few photos, one of them large enough to be downscaled
    files = photos(tmp_path, 2) + [write(tmp_path / "big.jpg", encode(scene(70, (2000, 1500))))]
    # When they are prepared twice into different folders, and again into the first one
    one, two = run_twice(files, tmp_path)
    again = prepare_images(files, tmp_path / "one", ONE)
    # Then names and bytes are identical, and no temporary file is left behind
    assert [p.name for p in one.paths] == [p.name for p in two.paths] == [p.name for p in again.paths]
    for a, b in zip(one.paths, two.paths, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["0001.jpg", "0002.jpg", "0003.jpg"]


def test_progress_is_reported_per_file_up_to_one(tmp_path: Path) -> None:
    # Given three photos, one of them unusable
    files = photos(tmp_path, 2) + [write(tmp_path / "x.txt", b"x")]
    seen: list[float] = []
    # When they are prepared
    prepare_images(files, tmp_path / "out", ONE, progress=seen.append)
    # Then progress rises once per file and ends at exactly 1.0
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_refuses_to_run_if_truncated_images_were_allowed_globally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given some other code has told Pillow to pad truncated images with grey
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    # When photos are prepared, then the stage refuses rather than accept broken photos
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        prepare_images(photos(tmp_path, 1), tmp_path / "out", ONE)
