"""daemon/handlers/sniff.py: what a file is from its first bytes, the same answer for every job kind."""

from __future__ import annotations

import pytest

from daemon.handlers.sniff import (
    FTYP_BRANDS,
    content_agrees,
    describe_content,
    sniff_image,
    sniff_media_type,
    sniff_model,
    sniff_video,
)


def ftyp(brand: bytes) -> bytes:
    """The start of an ISO-BMFF file whose major brand is `brand`."""
    return b"\0\0\0\x18ftyp" + brand + b"\0\0\0\0" + brand + b"isom"


TS = bytes([0x47] + [0] * 187) * 3
OCTET, RIFF, BINARY = "application/octet-stream", "application/x-riff", "unknown binary data"
M4A = "an M4A audio file"

# fmt: off
FILES = [
    # head,                                   image,  video,      media type,            looks like
    (b"\xff\xd8\xff\xe0\0\x10JFIF",            "JPEG", None,       "image/jpeg",          "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",         "PNG",  None,       "image/png",           "a PNG image"),
    (b"GIF89a\x01\0\x01\0",                    "GIF",  None,       "image/gif",           "a GIF image"),
    (b"BM6\0\0\0\0\0",                         "BMP",  None,       OCTET,                 "a BMP image"),
    (b"II*\0\x08\0\0\0",                       "TIFF", None,       OCTET,                 "a TIFF image"),
    (b"RIFF\0\0\0\0WEBPVP8 ",                  "WEBP", None,       RIFF,                  "a WEBP image"),
    (ftyp(b"heic"),                            "HEIF", None,       "image/heic",          "a HEIF image"),
    (ftyp(b"mif1"),                            "HEIF", None,       "image/heif",          "a HEIF image"),
    (ftyp(b"hevc"),                            "HEIF", None,       "image/heic-sequence", "a HEIF image"),
    (ftyp(b"avif"),                            "AVIF", None,       "image/avif",          "a AVIF image"),
    (ftyp(b"isom"),                            None,   "mp4",      "video/mp4",           BINARY),
    (ftyp(b"qt  "),                            None,   "mov",      "video/quicktime",     BINARY),
    (ftyp(b"3gp4"),                            None,   "mp4",      OCTET,                 BINARY),
    (ftyp(b"M4A "),                            None,   "mp4",      OCTET,                 M4A),
    (b"\0\0\0\x08wide\0\0\0\0mdat",            None,   "mov",      OCTET,                 BINARY),
    (b"RIFF\0\0\0\0AVI LIST",                  None,   "avi",      RIFF,                  BINARY),
    (b"RIFF\0\0\0\0WAVEfmt ",                  None,   None,       RIFF,                  "a WAV audio file"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01",  None,   "matroska", OCTET,                 BINARY),
    (TS,                                       None,   "mpegts",   OCTET,                 BINARY),
    (b"ply\nformat ascii 1.0\n",               None,   None,       "application/x-ply",   "text"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3",           None,   None,       OCTET,                 "a PDF document"),
    (b"<!DOCTYPE html><html>",                 None,   None,       OCTET,                 "an HTML page"),
    (b'{"error": "expired"}',                  None,   None,       OCTET,                 "JSON text"),
    (b"",                                      None,   None,       OCTET,                 "an empty file"),
]
# fmt: on


@pytest.mark.parametrize(("head", "image", "video", "media_type", "looks_like"), FILES)
def test_each_kind_reads_the_same_file_the_same_way(head, image, video, media_type, looks_like):
    # Given a file's first bytes, When each kind sniffs them, Then each answers in its own terms
    assert sniff_image(head) == image
    assert sniff_video(head) == video
    assert sniff_media_type(head) == media_type
    assert describe_content(head) == looks_like


@pytest.mark.parametrize("brand", sorted(FTYP_BRANDS))
def test_a_named_brand_is_an_image_or_a_video_never_both(brand):
    head = ftyp(brand)
    assert (sniff_image(head) is None) != (sniff_video(head) is None)
    assert sniff_media_type(head) == FTYP_BRANDS[brand].media_type


@pytest.mark.parametrize(
    ("declared", "head", "agrees"),
    [
        ("image/jpeg", b"\xff\xd8\xff\xe0" + bytes(60), True),
        ("image/jpg", b"\xff\xd8\xff\xe0" + bytes(60), True),
        ("IMAGE/JPEG; q=1", b"\xff\xd8\xff\xe0" + bytes(60), True),
        ("image/png", b"\xff\xd8\xff\xe0" + bytes(60), False),
        ("image/jpeg", b"<!doctype html><html>", False),
        ("video/mp4", b"\0\0\0\x18ftypqt  " + bytes(40), True),  # a MOV called MP4: FFmpeg reads it
        ("video/quicktime", b"\0\0\0\x18ftypisom" + bytes(40), True),
        ("video/mp4", b"\0\0\0\x18ftypXAVC" + bytes(40), True),  # a brand we do not name
        ("video/mp4", b"\0\0\0\x18ftypheic" + bytes(40), False),  # an iPhone photo
        ("image/heif", b"\0\0\0\x18ftypheic" + bytes(40), True),
        ("video/x-msvideo", b"RIFF\0\0\0\0AVI LIST", True),
        ("application/x-ply", b"ply\nformat binary_little_endian 1.0\n", True),
        ("video/webm", b"\x1aE\xdf\xa3" + bytes(40), None),  # no signature here tells
        ("video/webm", b"\xff\xd8\xff\xe0" + bytes(60), False),  # but a JPEG is certainly not one
    ],
)
def test_a_declared_media_type_is_checked_against_the_first_bytes(declared, head, agrees):
    assert content_agrees(declared, head) is agrees


def test_models_are_told_by_their_bytes_including_a_binary_stl_whose_header_says_solid():
    binary_stl = b"solid exported by a CAD tool".ljust(80, b" ") + (2).to_bytes(4, "little") + bytes(100)
    assert sniff_model(binary_stl, 84 + 2 * 50) == "stl"
    assert sniff_model(b"solid cube\n  facet normal 0 0 1\n", 40) == "stl"
    assert sniff_model(b"# exported\nmtllib a.mtl\no cube\nv 0 0 0\nv 1 0 0\nf 1 2 3\n", 60) == "obj"
    assert sniff_model(b'{"asset": {"version": "2.0"}, "meshes": []}', 50) == "gltf"
    assert sniff_model(b"glTF\x02\x00\x00\x00", 1000) == "glb"
    assert sniff_model(b"ply\nformat ascii 1.0\n", 100) == "ply"
    assert sniff_model(b"Kaydara FBX Binary  \x00", 1000) == "fbx"
    assert sniff_model(b"hello world, this is a note\nnot a model\n", 50) is None
    assert sniff_model(b'{"type": "FeatureCollection"}', 30) is None  # JSON, not glTF
