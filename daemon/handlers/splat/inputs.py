"""Stage `inputs` of the splat handler: turn the customer's downloaded photos into a clean image set.

Every usable photo comes out as `0001.jpg`, `0002.jpg`, … in input order: 8-bit sRGB, upright (EXIF
orientation applied, then all metadata dropped), long side at most `max_image_size`. Files that cannot
be used are reported with a stable code and the job goes on, unless too few usable photos remain.
Duplicates (the same file twice, or the same photo re-exported) are dropped, keeping the first.

Photos are handled one at a time and only their hashes are kept, so memory stays at one decoded image.
Image sizes are checked from the header before any pixel is decoded (decompression bombs).
The output is a pure function of the input bytes and options, so a retried job writes the same files.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import ExifTags, Image, ImageCms, ImageFile, UnidentifiedImageError

from ...digest import file_sha256
from ...errors import InputError
from ..sniff import sniff_image, sniff_video

try:  # HEIC/HEIF (every iPhone photo) needs the optional pillow-heif package.
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - depends on the environment
    HEIF_SUPPORTED = False
else:
    register_heif_opener()  # libheif applies the HEIF rotation itself and resets EXIF orientation to 1
    HEIF_SUPPORTED = True

NEAR_DUPLICATE_BITS = 6
"""Two photos whose 256-bit dHashes differ in at most this many bits are the same photo. Re-encoding
(JPEG q70), resizing to 60 % or a brightness change moves the hash by 0-3 bits; shifting the camera by
just 0.5 % of the frame already moves it by 9+ bits (measured on synthetic scenes), so 6 only catches
re-uploads and re-exports, never a genuinely different, if close, view."""

HASH_SIDE = 16
"""dHash grid side (16x16 = 256 bits). An 8x8 hash cannot separate the two cases above: a 0.5 % shift
and a recompression both land at 0-3 bits of 64."""

ALPHA_BACKGROUND = (0, 0, 0)
"""Transparent pixels are composited onto black: gsplat renders onto a black background by default, so
a cut-out object's transparent surround trains as empty space instead of a wall of white Gaussians."""

SUPPORTED_FORMATS = ("JPEG", "PNG", "HEIF")
"""Pillow format names accepted as input."""

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))

# Orientation tag value -> the transpose that makes the stored pixels upright (as in ImageOps).
_UPRIGHT: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# What a failing decoder raises: Pillow uses OSError/SyntaxError/EOFError and lets a few low-level
# errors through on malformed data (zlib.error from a bad iCCP chunk); pillow-heif raises
# ValueError/RuntimeError.
_BAD_DATA = (OSError, SyntaxError, EOFError, ValueError, RuntimeError, IndexError, struct.error, zlib.error)


@dataclass(frozen=True)
class ImageOptions:
    # Long side of every output image, in pixels; larger photos are downscaled, smaller ones kept.
    max_image_size: int = 1600
    # Fewer usable photos than this fails the job (too_few_images): SfM cannot register so few views.
    min_images: int = 5
    # Per-image pixel cap, checked from the header before decoding (decompression bombs). Pillow's own
    # cap (Image.MAX_IMAGE_PIXELS, about 89 Mpx) also applies, so the effective cap is the smaller one.
    max_pixels: int = 100_000_000
    # Quality of the output JPEGs (chroma is kept at full resolution).
    jpeg_quality: int = 95
    # Photos with a side shorter than this carry too little detail to match features on.
    min_side: int = 64


@dataclass(frozen=True)
class RejectedImage:
    name: str
    code: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.code}: {self.reason})"


@dataclass(frozen=True)
class PreparedImages:
    # Normalised images in out_dir, numbered 0001.jpg… in input order.
    paths: list[Path]
    rejected: list[RejectedImage]
    # Input names dropped because an earlier input was the same photo.
    duplicates: list[str]
    # (width, height) of each image in `paths`, upright.
    sizes: list[tuple[int, int]]
    # Input name of each image in `paths`, to name the customer's file in later errors.
    sources: list[str] = field(default_factory=list)
    # The device each image in `paths` came from (EXIF make, model, focal length), None without EXIF:
    # SfM groups images into cameras by it (sfm_cameras.py); the metadata itself is not kept.
    devices: list[str | None] = field(default_factory=list)
    # When each image in `paths` was taken (EXIF DateTimeOriginal, "YYYY:MM:DD HH:MM:SS[.fff]"), None
    # without: photos taken in input order are a walk, matched along it (sfm_matching.py).
    taken: list[str | None] = field(default_factory=list)


class _Rejected(Exception):  # noqa: N818 - internal signal, becomes a RejectedImage
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def prepare_images(
    files: Sequence[Path],
    out_dir: Path,
    options: ImageOptions,
    *,
    progress: Callable[[float], None] = lambda f: None,
) -> PreparedImages:
    """Normalise `files` into `out_dir`; raise InputError if fewer than `options.min_images` are usable."""
    if not files:
        raise InputError("no images were given", code="no_images")
    # A truncated photo must be refused, not silently padded with grey; the flag is process-global.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set by someone; refusing to decode")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = PreparedImages(paths=[], rejected=[], duplicates=[], sizes=[])
    seen_sha256: set[str] = set()
    seen_dhash: list[int] = []
    for index, path in enumerate(files):
        try:
            digest, fmt = _check_file(path)
            if digest in seen_sha256:
                result.duplicates.append(path.name)
            else:
                image, device, taken = _load_normalised(path, fmt, options)
                image_hash = dhash(image)
                if any((image_hash ^ seen).bit_count() <= NEAR_DUPLICATE_BITS for seen in seen_dhash):
                    result.duplicates.append(path.name)
                else:
                    out = out_dir / f"{len(result.paths) + 1:04d}.jpg"
                    save_jpeg(image, out, options.jpeg_quality)
                    seen_sha256.add(digest)
                    seen_dhash.append(image_hash)
                    result.paths.append(out)
                    result.sizes.append(image.size)
                    result.sources.append(path.name)
                    result.devices.append(device)
                    result.taken.append(taken)
        except _Rejected as rejected:
            result.rejected.append(RejectedImage(path.name, rejected.code, rejected.reason))
        progress((index + 1) / len(files))
    if len(result.paths) < options.min_images:
        raise InputError(_too_few_message(result, options.min_images), code="too_few_images")
    return result


def _check_file(path: Path) -> tuple[str, str]:
    """Refuse empty files and files that are not a supported image; return (SHA-256, format)."""
    with path.open("rb") as src:
        head = src.read(32)
    if not head:
        raise _Rejected("empty_file", "the file is empty (0 bytes)")
    kind = sniff_image(head)
    if kind is None:
        if sniff_video(head) is not None:
            raise _Rejected("not_an_image", "a video, not a photo: send a video as a splat_video job")
        raise _Rejected("not_an_image", "not a JPEG, PNG or HEIC image")
    if kind == "HEIF" and not HEIF_SUPPORTED:
        raise _Rejected("unsupported_format", "HEIC/HEIF is not supported (pillow-heif is not installed)")
    if kind not in SUPPORTED_FORMATS:
        raise _Rejected("unsupported_format", f"{kind} images are not supported; send JPEG, PNG or HEIC")
    return file_sha256(path)[1], kind


def _load_normalised(
    path: Path, fmt: str, options: ImageOptions
) -> tuple[Image.Image, str | None, str | None]:
    """Decode one photo fully and return it as upright 8-bit sRGB, downscaled to the size cap, with
    its device key (`device_key`) and when it was taken (`taken_at`)."""
    with path.open("rb") as src:
        decoded = _open_header(src, fmt, options)
        width, height = decoded.size
        scale = min(1.0, options.max_image_size / max(width, height))
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if fmt == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below target): far less memory and
            # time for a 48 Mpx photo, and it still reads every byte, so truncation is still caught.
            # MPO files (JPEG plus extra frames, e.g. a gain map) open here too; only frame 0 is read.
            decoded.draft(None, target)
        try:
            decoded.load()  # decodes the whole image: truncated or corrupt data raises here
            # Read after load: a PNG's eXIf chunk may follow the pixel data.
            exif = decoded.getexif()
            orientation = exif.get(ExifTags.Base.Orientation, 1)
            device, taken = device_key(exif), taken_at(exif)
        except _BAD_DATA as exc:
            raise _Rejected("corrupt_image", f"the image data is truncated or corrupt ({exc})") from None
    image = _to_srgb(decoded)
    if image.size != target:
        image = image.resize(target, Image.Resampling.LANCZOS)
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    return image, device, taken


def taken_at(exif: Image.Exif) -> str | None:
    """EXIF DateTimeOriginal (with SubSecTimeOriginal when given), as written: it sorts in time order."""
    try:
        details = exif.get_ifd(ExifTags.IFD.Exif)
        when = details.get(ExifTags.Base.DateTimeOriginal)
        subsec = details.get(ExifTags.Base.SubsecTimeOriginal)
    except (KeyError, OSError, TypeError, ValueError):
        return None
    if not isinstance(when, str) or len(when.strip("\x00 ")) != 19:
        return None
    fraction = str(subsec).strip("\x00 ") if subsec is not None else ""
    return when.strip("\x00 ") + (f".{fraction}" if fraction.isdigit() else "")


def device_key(exif: Image.Exif) -> str | None:
    """ "make model focal" of the device that took the photo, from its EXIF; None without a focal
    length (a zoom lens at an unknown focal length tells nothing about the intrinsics)."""
    try:
        focal = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.FocalLength)
        focal_mm = float(focal) if focal is not None else None
    except (TypeError, ValueError, ZeroDivisionError, KeyError, OSError):
        return None
    if not focal_mm or focal_mm <= 0:
        return None
    make, model = (
        str(exif.get(tag, "")).strip("\x00 ")[:64] for tag in (ExifTags.Base.Make, ExifTags.Base.Model)
    )
    return f"{make or '?'} {model or '?'} {focal_mm:.2f}mm"


def _open_header(src: BinaryIO, fmt: str, options: ImageOptions) -> ImageFile.ImageFile:
    """Read only the header, and refuse images whose pixel count or size is out of bounds."""
    with warnings.catch_warnings():
        # Pillow warns between MAX_IMAGE_PIXELS and twice that, then raises: both mean "too large".
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(src, formats=[fmt])  # the sniffed format, and no other decoder
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _Rejected("image_too_large", f"refused before decoding: {exc}") from None
        except UnidentifiedImageError:  # its message names our temp path: say it plainly instead
            raise _Rejected("corrupt_image", "the image header is unreadable") from None
        except _BAD_DATA as exc:
            raise _Rejected("corrupt_image", f"the image header is unreadable ({exc})") from None
    width, height = image.size
    if width * height > options.max_pixels:
        raise _Rejected(
            "image_too_large", f"{width}x{height} is over the {options.max_pixels:,}-pixel limit per image"
        )
    if min(width, height) < options.min_side:
        raise _Rejected("image_too_small", f"{width}x{height} is under {options.min_side} px on a side")
    return image


def _to_srgb(image: Image.Image) -> Image.Image:
    """Any mode (16-bit, CMYK, palette, grey, alpha) to 8-bit RGB, converting from the ICC profile."""
    icc = image.info.get("icc_profile")  # read first: the conversions below may drop `info`
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # convert() clips 16-bit grey at 255 instead of scaling it: scale to 8 bits first.
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        image.paste(rgba, mask=rgba.getchannel("A"))
    if icc:
        # Phones shoot Display P3 (iPhone) or other wide gamuts; the splat is viewed as sRGB.
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken or mismatched profile: fall back to treating the pixels as sRGB
    return image.convert("RGB")


def dhash(image: Image.Image) -> int:
    """Difference hash: one bit per horizontally adjacent pair of a 17x16 grey thumbnail."""
    grey = image.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BOX).tobytes()
    bits = 0
    for y in range(HASH_SIDE):
        row = grey[y * (HASH_SIDE + 1) : (y + 1) * (HASH_SIDE + 1)]
        for x in range(HASH_SIDE):
            bits = bits << 1 | (row[x] > row[x + 1])
    return bits


def save_jpeg(image: Image.Image, out: Path, quality: int) -> None:
    """Write atomically (a retried job may find a half-written file otherwise), with no metadata."""
    image.info.clear()  # no EXIF (GPS, serial numbers), no ICC: the pixels are sRGB now
    tmp = out.with_name(f".{out.name}.tmp")
    image.save(tmp, "JPEG", quality=quality, subsampling=0)  # 4:4:4 keeps colour edges sharp
    os.replace(tmp, out)


def _too_few_message(result: PreparedImages, min_images: int) -> str:
    message = f"{len(result.paths)} usable images, need ≥ {min_images}"
    if result.rejected:
        message += "; rejected: " + ", ".join(str(r) for r in result.rejected)
    if result.duplicates:
        message += "; duplicates dropped: " + ", ".join(result.duplicates)
    return message
