"""Test videos: the orbit videos of `daemon/samples/video.py` (shared with `make demo`, re-exported
here), and broken files, one per way a customer's upload can fail.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
from PIL import Image

from daemon.samples.video import FPS, SIZE, OrbitVideo, encode_video, render_orbit_view, write_orbit_video

__all__ = [  # the first four are daemon/samples', named here so video tests find every video in one place
    "FPS",
    "OrbitVideo",
    "encode_video",
    "write_orbit_video",
    "autorotated_first_frame",
    "small_video",
    "write_audio_only",
    "write_damaged",
    "write_garbage_mp4",
    "write_html",
    "write_jpeg",
    "write_streamed_mkv",
    "write_subtitles_only",
    "write_truncated_mp4",
    "write_undecodable",
    "write_unknown_codec",
]


# -- broken and wrong files ----------------------------------------------------------------------


def small_video(path: Path, *, frames: int = 20, seed: int = 0) -> OrbitVideo:
    """A short orbit video (not supersampled: quick), the raw material of most broken files below."""
    return write_orbit_video(path, frames=frames, seed=seed, supersample=1)


def _small_video_bytes(path: Path) -> bytes:
    scratch = path.with_name(f".{path.stem}-source.mp4")
    small_video(scratch)
    try:
        return scratch.read_bytes()
    finally:
        scratch.unlink()


def write_truncated_mp4(path: Path, keep: float = 0.6) -> Path:
    """An MP4 cut off part-way (an interrupted upload): the `moov` index, which a muxer writing
    straight to disk puts at the end, is gone."""
    data = _small_video_bytes(path)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_garbage_mp4(path: Path, *, seed: int = 0) -> Path:
    """A valid `ftyp` header followed by random bytes (a corrupted or mislabelled file)."""
    head = _small_video_bytes(path)
    ftyp_size = struct.unpack(">I", head[:4])[0]
    path.write_bytes(head[:ftyp_size] + np.random.default_rng(seed).bytes(50_000))
    return path


def write_undecodable(path: Path) -> Path:
    """An MP4 whose container is intact but whose sample data (`mdat` payload) is all zeros, so no
    frame decodes."""
    data = bytearray(_small_video_bytes(path))
    start, size = _box(data, b"mdat")
    data[start + 8 : start + size] = bytes(size - 8)
    path.write_bytes(bytes(data))
    return path


def write_damaged(source: Path, path: Path, packets: Sequence[int]) -> Path:
    """`source` with the bytes of the given video packets (0-based, in file order) zeroed: those
    frames fail to decode, the rest of the file is fine (a few bad sectors, a glitch in a recording)."""
    with av.open(str(source)) as container:
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size and p.pos is not None]
    data = bytearray(source.read_bytes())
    for index in packets:
        pos, size = spans[index]
        data[pos : pos + size] = bytes(size)
    path.write_bytes(bytes(data))
    return path


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """AAC audio (a 440 Hz tone) and no video, in whatever container the suffix names (.m4a, .mp4)."""
    rate = 44_100
    fmt = "mp4" if path.suffix.lower() in (".m4a", ".mp4", ".mov") else None
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
        step = 1024
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_subtitles_only(path: Path) -> Path:
    """A Matroska file whose only stream is subtitles (no video, no audio), made by the ffmpeg CLI."""
    srt = path.with_suffix(".srt")
    srt.write_text("1\n00:00:00,000 --> 00:00:02,000\nhello\n\n2\n00:00:02,000 --> 00:00:04,000\nworld\n")
    _ffmpeg("-i", str(srt), "-c:s", "srt", str(path))
    srt.unlink()
    return path


def write_unknown_codec(path: Path, fourcc: bytes = b"XQZ9") -> Path:
    """An AVI of raw RGB frames whose codec fourcc is patched to one no decoder knows (in the stream
    header `strh` and the bitmap header `strf`)."""
    images = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(5)]
    raw = path.with_name(f".{path.stem}-raw.avi")
    with av.open(str(raw), "w") as container:
        stream = container.add_stream("rawvideo", rate=10)
        stream.pix_fmt = "bgr24"
        stream.width, stream.height = 64, 48
        for index, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = bytearray(raw.read_bytes())
    strh = data.find(b"strh")
    assert strh > 0 and data[strh + 8 : strh + 12] == b"vids"
    data[strh + 12 : strh + 16] = fourcc  # fccHandler
    strf = data.find(b"strf")
    assert strf > 0
    data[strf + 8 + 16 : strf + 8 + 20] = fourcc  # BITMAPINFOHEADER.biCompression
    path.write_bytes(bytes(data))
    raw.unlink()
    return path


def write_streamed_mkv(source: Path, path: Path) -> Path:
    """`source` remuxed into Matroska written to a pipe, as a live stream is: the muxer cannot seek
    back, so the header states no duration and only decoding finds out how long the video is."""
    with path.open("wb") as out:
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(source), "-c", "copy", "-f", "matroska", "-"],
            stdout=out,
            check=True,
            timeout=60,
        )
    return path


def write_html(path: Path) -> Path:
    """What a share link often serves instead of the file: a web page."""
    path.write_text(
        "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in</body></html>\n"
    )
    return path


def write_jpeg(path: Path) -> Path:
    """A photo where a video was expected (FFmpeg would happily read it as a one-frame video)."""
    Image.fromarray(render_orbit_view(0, 8, SIZE, 0, 1)).save(path, "JPEG", quality=90)
    return path


def _box(data: bytes | bytearray, kind: bytes) -> tuple[int, int]:
    """(offset, size) of the first top-level ISO-BMFF box of `kind`."""
    offset = 0
    while offset + 8 <= len(data):
        size, name = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        if name == kind:
            return offset, size
        if size < 8:
            break
        offset += size
    raise ValueError(f"no {kind!r} box")


def _ffmpeg(*args: str) -> None:
    if shutil.which("ffmpeg") is None:  # pragma: no cover - depends on the machine
        raise RuntimeError("the ffmpeg CLI is needed to make this test file")
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=60)


def autorotated_first_frame(path: Path, out: Path) -> np.ndarray:
    """The first frame as the ffmpeg CLI shows it (it applies the display matrix by default): the
    reference for "upright", independent of our own reading of the rotation."""
    _ffmpeg("-i", str(path), "-frames:v", "1", str(out))
    return np.asarray(Image.open(out).convert("RGB"))
