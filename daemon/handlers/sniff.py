"""What a file is, from its first bytes, never its name: the one place magic numbers are read.

Every kind asks here: `inspect` for a media type to report (`sniff_media_type`), `splat` for the image
format it decodes (`sniff_image`), `splat_video` for the container it opens (`sniff_video`), and both
splat kinds for what a wrong file looks like, to say so in the error (`describe_content`). The answers
come from one set of signatures, so a file is the same thing to every kind: an iPhone photo is a HEIF
image to the photo job and not a video to the video job.

Pure functions of bytes: they run on the first bytes of a download, before the rest arrives.
"""

from __future__ import annotations

from typing import NamedTuple


class Brand(NamedTuple):
    """What an ISO-BMFF file (MP4, MOV, HEIF, AVIF) is, from the major brand after its `ftyp`."""

    # "HEIF" or "AVIF" for images (as `sniff_image` names them), "mov" or "mp4" for videos (as
    # `sniff_video` does).
    format: str
    media_type: str

    @property
    def is_image(self) -> bool:
        return self.media_type.startswith("image/")


FTYP_BRANDS: dict[bytes, Brand] = {
    # HEIF (HEVC-coded) still images and image sequences: every iPhone photo.
    b"heic": Brand("HEIF", "image/heic"),
    b"heix": Brand("HEIF", "image/heic"),
    b"heim": Brand("HEIF", "image/heic"),
    b"heis": Brand("HEIF", "image/heic"),
    b"hevc": Brand("HEIF", "image/heic-sequence"),
    b"hevx": Brand("HEIF", "image/heic-sequence"),
    b"mif1": Brand("HEIF", "image/heif"),
    b"msf1": Brand("HEIF", "image/heif-sequence"),
    # AVIF (AV1-coded) still images and image sequences: a different codec, named but not read.
    b"avif": Brand("AVIF", "image/avif"),
    b"avis": Brand("AVIF", "image/avif"),
    b"qt  ": Brand("mov", "video/quicktime"),
    b"isom": Brand("mp4", "video/mp4"),
    b"mp42": Brand("mp4", "video/mp4"),
}
"""Major brands we name. A file with an `ftyp` box is judged by its brand alone. Any other brand is an
MP4 to FFmpeg (`sniff_video`), which finds out what it holds, but has no media type we would vouch for
(`sniff_media_type`)."""

IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\0", "TIFF"),
    (b"MM\0*", "TIFF"),
)
"""Leading bytes of the image formats that are not ISO-BMFF or RIFF, with Pillow's name for each."""

IMAGE_MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif"}
"""The image formats whose media type `inspect` reports (and whose pixel size it reads)."""

PLY_SIGNATURES = (b"ply\n", b"ply\r\n")
"""The first line of a PLY point cloud or splat."""

OTHER_FILES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"ID3", "an MP3 audio file"),
    (b"OggS", "an Ogg file"),
    (b"fLaC", "a FLAC audio file"),
)
"""Leading bytes of files people upload by mistake, and how an error message calls them."""

UNKNOWN_MEDIA_TYPE = "application/octet-stream"


def ftyp_brand(head: bytes) -> Brand | None:
    """The named brand of an ISO-BMFF file; None for other files and for brands not in FTYP_BRANDS."""
    return FTYP_BRANDS.get(head[8:12]) if _is_iso_bmff(head) else None


def sniff_image(head: bytes) -> str | None:
    """The image format from the file's first bytes ("JPEG", "PNG", "HEIF", "AVIF", "GIF", "BMP",
    "TIFF", "WEBP"), or None if not an image."""
    if _is_iso_bmff(head):
        brand = ftyp_brand(head)
        return brand.format if brand and brand.is_image else None
    for magic, name in IMAGE_SIGNATURES:
        if head.startswith(magic):
            return name
    if _riff_type(head) == b"WEBP":
        return "WEBP"
    return None


def sniff_video(head: bytes) -> str | None:
    """The container family from a file's first bytes ("mp4", "mov", "avi", "matroska", "mpegts"),
    or None if they are not a video container we read. Pass at least 400 bytes: MPEG-TS is only
    recognised from the sync bytes of three packets."""
    if _is_iso_bmff(head):
        brand = ftyp_brand(head)
        if brand is None:
            return "mp4"
        return None if brand.is_image else brand.format
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mov"  # QuickTime files from before `ftyp` existed start straight with an atom
    if _riff_type(head) == b"AVI ":
        return "avi"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # EBML header: Matroska or WebM
    for offset, stride in ((0, 188), (4, 192)):  # plain TS, and Blu-ray M2TS with a 4-byte prefix
        starts = range(offset, min(len(head), offset + 3 * stride), stride)
        if len(starts) == 3 and all(head[i] == 0x47 for i in starts):
            return "mpegts"
    return None


MODEL_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"glTF", "glb"),
    (b"PK\x03\x04", "zip"),  # a .gltf with its files, or an OBJ with its MTL and textures
    (b"ply\n", "ply"),
    (b"ply\r\n", "ply"),
    (b"Kaydara FBX Binary", "fbx"),
    (b"; FBX", "fbx"),  # ASCII FBX
)
"""Leading bytes of the 3D model containers the mesh kind reads, with its name for each."""

OBJ_STATEMENTS = ("v ", "vt ", "vn ", "f ", "o ", "g ", "s ", "mtllib ", "usemtl ")


def sniff_model(head: bytes, size: int) -> str | None:
    """The model format from a file's first bytes and its size: "glb", "zip", "ply", "fbx", "gltf"
    (JSON with an `asset`), "stl" (ASCII, or binary whose triangle count matches `size`), "obj" (text
    of OBJ statements), or None. Pass at least 1 KiB."""
    for magic, name in MODEL_SIGNATURES:
        if head.startswith(magic):
            return name
    if len(head) >= 84 and 84 + 50 * int.from_bytes(head[80:84], "little") == size:
        return "stl"  # binary STL: an 80-byte header (which may itself say "solid"), then the count
    text = _as_text(head)
    if text is None:
        return None
    stripped = text.lstrip()
    if stripped.startswith("{") and '"asset"' in text:
        return "gltf"
    if stripped.startswith("solid") and "facet" in text:
        return "stl"
    lines = [line.strip() for line in text.splitlines()[:-1] if line.strip()]  # the last may be cut
    statements = [line for line in lines if not line.startswith("#")]
    if statements and all(line.startswith(OBJ_STATEMENTS) for line in statements[:20]):
        return "obj"
    return None


def sniff_media_type(head: bytes) -> str:
    """The media type `inspect` reports for a file; application/octet-stream when unknown."""
    if _is_iso_bmff(head):
        brand = ftyp_brand(head)
        return brand.media_type if brand else UNKNOWN_MEDIA_TYPE
    image = sniff_image(head)
    if image in IMAGE_MEDIA_TYPES:
        return IMAGE_MEDIA_TYPES[image]
    if head.startswith(PLY_SIGNATURES):
        return "application/x-ply"
    if _riff_type(head) is not None:
        return "application/x-riff"  # WAV, AVI and WebP alike
    return UNKNOWN_MEDIA_TYPE


MEDIA_TYPE_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "video/x-quicktime": "video/quicktime",
}
"""Names clients use for the media types `sniff_media_type` reports."""

AGREEING_FAMILIES: tuple[frozenset[str], ...] = (
    # ISO-BMFF videos: phones and browsers say video/mp4 of a MOV and the reverse; FFmpeg reads both.
    frozenset({"video/mp4", "video/quicktime", "video/x-m4v", "video/3gpp"}),
    frozenset({"image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"}),
    frozenset({"image/avif"}),
    # RIFF holds WAV, AVI and WebP alike: its first bytes do not tell which.
    frozenset(
        {"application/x-riff", "video/x-msvideo", "video/avi", "audio/wav", "audio/x-wav", "image/webp"}
    ),
)

_KNOWN_TYPES = frozenset(
    {*IMAGE_MEDIA_TYPES.values(), "application/x-ply", *(b.media_type for b in FTYP_BRANDS.values())}
)


def content_agrees(declared: str, head: bytes) -> bool | None:
    """Whether a file's first bytes agree with the media type its spec declared: True or False, or None
    when nothing here can tell (a declared type no signature identifies, such as video/webm)."""
    want = declared.split(";", 1)[0].strip().lower()
    want = MEDIA_TYPE_ALIASES.get(want, want)
    got = sniff_media_type(head)
    if got == UNKNOWN_MEDIA_TYPE and _is_iso_bmff(head):
        got = "video/mp4"  # a brand we do not name: an MP4 to FFmpeg (see FTYP_BRANDS)
    if got == want or any(want in family and got in family for family in AGREEING_FAMILIES):
        return True
    if want in _KNOWN_TYPES or any(want in family for family in AGREEING_FAMILIES):
        return False  # we know that type's signature, and this file does not have it
    return None if got == UNKNOWN_MEDIA_TYPE else False


def describe_content(head: bytes) -> str:
    """What a file that is not what a job wanted looks like, for error messages ("an HTML page",
    "a JPEG image", "text", …)."""
    if not head:
        return "an empty file"
    image = sniff_image(head)
    if image is not None:
        return f"a {image} image"
    for magic, what in OTHER_FILES:
        if head.startswith(magic):
            return what
    if _riff_type(head) == b"WAVE":
        return "a WAV audio file"
    if _is_iso_bmff(head) and head[8:11] == b"M4A":
        return "an M4A audio file"
    text = _as_text(head)
    if text is None:
        return "unknown binary data"
    lowered = text.lstrip().lower()
    if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered[:1024]:
        return "an HTML page"
    if lowered.startswith("<?xml"):
        return "an XML document"
    if lowered.startswith(("{", "[")):
        return "JSON text"
    return "text"


def _is_iso_bmff(head: bytes) -> bool:
    return head[4:8] == b"ftyp"


def _riff_type(head: bytes) -> bytes | None:
    """The form type of a RIFF file (b"WEBP", b"AVI ", b"WAVE", …), None for other files."""
    return head[8:12] if head.startswith(b"RIFF") else None


def _as_text(head: bytes) -> str | None:
    """`head` as text if it is UTF-8 (a character cut at the end is fine) without control bytes."""
    text = head.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    text = text[:-1] if text.endswith("\ufffd") else text
    if "\ufffd" in text or any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return None
    return text
