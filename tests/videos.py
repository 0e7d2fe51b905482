# ruff: noqa: N803, N806 - R, t, K: the notation of the multiple-view geometry literature
"""Test videos made on the spot: camera orbits around the textured room of `tests/scenes.py`, encoded
with PyAV, with known per-frame poses; and broken files, one per way a customer's upload can fail.

Orbit videos are H.264 (libx264, yuv420p) at 320×240 and 10 fps by default, so a whole one renders
and encodes in a couple of seconds. Options add what frame selection must cope with: strongly
blurred frames, a segment where the camera stands still, a phone's rotation metadata (frames stored
sideways plus a display matrix, so a player shows them upright), H.265, and MOV / AVI / MKV
containers. Rendered frames are cached per (pose, size, seed) for the session: several videos of one
test run share their renders.

Poses follow COLMAP, as in `tests/scenes.py`: world-to-camera `x_cam = R @ x_world + t`.
"""

from __future__ import annotations

import functools
import math
import shutil
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageFilter

from tests import scenes

FPS = 10
"""Frame rate of the test videos: enough frames per 1/2 s bucket (5) to choose from, few to render."""

SIZE = (320, 240)
"""Upright (width, height) of the test videos. An orbit at this size with 16+ views spread around the
full circle (the default 80 frames sampled at 2 per second) registers reliably in SfM; fewer or
smaller views do not."""

FOV_DEG = 60.0
"""Horizontal field of view of the upright view."""

BLUR_RADIUS = 4.0
"""Gaussian blur radius (px) of the deliberately blurred frames: their sharpness (Laplacian variance)
falls to about 0.3 % of a sharp frame's, unmistakable whatever the threshold."""

# Codec per container suffix when the caller does not choose one (AVI is the old MPEG-4 Part 2 world).
_DEFAULT_CODEC = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".avi": "mpeg4", ".ts": "libx264"}


@dataclass(frozen=True)
class OrbitVideo:
    path: Path
    poses: list[tuple[np.ndarray, np.ndarray]]
    """World-to-camera (R, t) of every frame, in presentation order."""
    K: np.ndarray
    """Pinhole intrinsics of the upright frames."""
    width: int
    """Upright width (as a player shows the video)."""
    height: int
    fps: int
    rotation: int
    """Display rotation stored in the file (degrees counter-clockwise, as `av.VideoFrame.rotation`)."""
    blurred: frozenset[int] = frozenset()
    """Frame numbers that were blurred before encoding."""
    still: range = range(0)
    """Frame numbers where the camera stands still (all showing the pose of the first of them)."""
    seed: int = 0
    arc_deg: float = 360.0
    supersample: int = 2
    pose_ids: tuple[int, ...] = field(default=(), repr=False)
    """Index of each frame's pose on the orbit (a still segment repeats one)."""

    @property
    def frames(self) -> int:
        return len(self.poses)

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    def time_of(self, frame: int) -> float:
        return frame / self.fps

    def upright(self, frame: int) -> np.ndarray:
        """The frame as rendered (H×W×3 uint8, upright, before blur and encoding)."""
        count = len(set(self.pose_ids))
        size = (self.width, self.height)
        return _render(self.pose_ids[frame], count, size, self.seed, self.supersample, self.arc_deg)


def orbit_pose(angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The camera on a smooth orbit around the box at `angle` (radians): radius and height swing
    gently so that the path is not planar (a special case SfM never meets)."""
    radius = 4.0 + 0.25 * math.sin(3 * angle)
    center = np.array([radius * math.cos(angle), radius * math.sin(angle), 1.7 + 0.2 * math.sin(2 * angle)])
    target = np.array([0.1 * math.cos(angle), 0.1 * math.sin(angle), 0.5])
    return scenes.look_at(center, target)


def _angle(index: int, count: int, seed: int, arc_deg: float) -> float:
    start = math.radians(37.0 * seed) - math.pi / 2
    full = arc_deg >= 360.0
    step = math.radians(arc_deg) / (count if full else max(count - 1, 1))
    return start + index * step


def intrinsics(width: int, height: int) -> np.ndarray:
    focal = (width / 2) / math.tan(math.radians(FOV_DEG) / 2)
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])


@functools.lru_cache(maxsize=512)
def _render(
    index: int, count: int, size: tuple[int, int], seed: int, supersample: int, arc_deg: float = 360.0
) -> np.ndarray:
    """Pose `index` of a `count`-pose orbit, rendered upright (cached: ~25 ms a view at 320×240, 2×2
    supersampled, and many test videos share their views)."""
    width, height = size
    s = supersample
    R, t = orbit_pose(_angle(index, count, seed, arc_deg))
    K_fine = np.diag([s, s, 1.0]) @ intrinsics(width, height)
    fine = scenes.render_view(R, t, K_fine, width * s, height * s, scenes._atlas("auto", seed))
    pixels = sum(fine[i::s, j::s] for i in range(s) for j in range(s)) / (s * s)
    image = np.clip(pixels, 0, 255).round().astype(np.uint8)
    image.flags.writeable = False
    return image


def write_orbit_video(
    path: Path,
    *,
    frames: int = 80,
    fps: int = FPS,
    size: tuple[int, int] = SIZE,
    seed: int = 0,
    arc_deg: float = 360.0,
    codec: str | None = None,
    crf: int = 20,
    blur: Sequence[int] = (),
    blur_radius: float = BLUR_RADIUS,
    still: tuple[int, int] | None = None,
    rotation: int = 0,
    supersample: int = 2,
    gop: int = 30,
) -> OrbitVideo:
    """Write a video of the camera orbiting the room once (`arc_deg`) over `frames` frames.

    `size` is the upright (width, height) a player shows; with `rotation` 90 or 270 (degrees
    counter-clockwise, as `av.VideoFrame.rotation` reads it) the frames are stored sideways, like a
    phone held upright, and a display matrix tells players to turn them back. `blur` frame numbers
    are Gaussian-blurred; `still=(first, count)` holds the camera at frame `first`'s pose for
    `count` frames, after which the orbit goes on where it stopped. The container follows the suffix
    (.mp4, .mov, .mkv, .avi, .ts); `codec` is a PyAV encoder name (libx264, libx265, mpeg4…)."""
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90 degrees")
    still_frames = range(still[0], still[0] + still[1]) if still else range(0)
    pose_ids: list[int] = []
    for index in range(frames):
        held = index in still_frames and index != still_frames.start
        pose_ids.append(pose_ids[-1] if held else len(set(pose_ids)))
    count = len(set(pose_ids))
    width, height = size
    video = OrbitVideo(
        path=path,
        poses=[orbit_pose(_angle(i, count, seed, arc_deg)) for i in pose_ids],
        K=intrinsics(width, height),
        width=width,
        height=height,
        fps=fps,
        rotation=rotation % 360,
        blurred=frozenset(blur),
        still=still_frames,
        seed=seed,
        arc_deg=arc_deg,
        supersample=supersample,
        pose_ids=tuple(pose_ids),
    )
    images = (_stored(video, i, blur_radius) for i in range(frames))
    encode_video(path, images, fps=fps, codec=codec, crf=crf, rotation=rotation, gop=gop)
    return video


def _stored(video: OrbitVideo, index: int, blur_radius: float) -> np.ndarray:
    """Frame `index` as stored in the file: blurred if asked, turned clockwise by the rotation."""
    image = video.upright(index)
    if index in video.blurred:
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(blur_radius)))
    # Stored frames turned clockwise by `rotation`, so turning them counter-clockwise shows them upright.
    return np.ascontiguousarray(np.rot90(image, k=-(video.rotation // 90)))


def encode_video(
    path: Path,
    images: Iterable[np.ndarray],
    *,
    fps: int = FPS,
    codec: str | None = None,
    crf: int = 20,
    rotation: int = 0,
    gop: int = 30,
    preset: str = "veryfast",
) -> None:
    """Encode RGB uint8 frames (an iterable of H×W×3 arrays) with PyAV; `rotation` (degrees
    counter-clockwise) is written as the stream's display matrix."""
    codec = codec or _DEFAULT_CODEC.get(path.suffix.lower(), "libx264")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        assert isinstance(stream, av.VideoStream)
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": preset}
        elif codec == "libx265":
            stream.options = {"crf": str(crf), "preset": preset, "x265-params": "log-level=error"}
        elif codec == "mpeg4":
            stream.bit_rate = 1_500_000
        if rotation % 360:
            stream.set_display_rotation(rotation)
        for index, image in enumerate(images):
            if index == 0:
                stream.height, stream.width = image.shape[:2]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


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
    Image.fromarray(_render(0, 8, SIZE, 0, 1)).save(path, "JPEG", quality=90)
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
