# ruff: noqa: N803, N806 - R, t, K: the notation of the multiple-view geometry literature
"""Phone-like videos made on the spot: camera orbits around the sample room (`room`), encoded with
PyAV, with known per-frame poses.

Orbit videos are H.264 (libx264, yuv420p) at 320×240 and 10 fps by default, so a whole one renders
and encodes in a couple of seconds. Options add what frame selection must cope with: strongly
blurred frames, a segment where the camera stands still, a phone's rotation metadata (frames stored
sideways plus a display matrix, so a player shows them upright), H.265, and MOV / AVI / MKV
containers. Rendered frames are cached per (pose, size, seed) for the process: several videos of one
test run share their renders.

Poses follow COLMAP, as in `cameras`: world-to-camera `x_cam = R @ x_world + t`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageFilter

from .cameras import look_at
from .room import render_view
from .textures import texture_atlas

FPS = 10
"""Frame rate of the sample videos: enough frames per 1/2 s bucket (5) to choose from, few to render."""

SIZE = (320, 240)
"""Upright (width, height) of the sample videos. An orbit at this size with 16+ views spread around the
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
        return render_orbit_view(self.pose_ids[frame], count, size, self.seed, self.supersample, self.arc_deg)


def orbit_pose(angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The camera on a smooth orbit around the box at `angle` (radians): radius and height swing
    gently so that the path is not planar (a special case SfM never meets)."""
    radius = 4.0 + 0.25 * math.sin(3 * angle)
    center = np.array([radius * math.cos(angle), radius * math.sin(angle), 1.7 + 0.2 * math.sin(2 * angle)])
    target = np.array([0.1 * math.cos(angle), 0.1 * math.sin(angle), 0.5])
    return look_at(center, target)


def _angle(index: int, count: int, seed: int, arc_deg: float) -> float:
    start = math.radians(37.0 * seed) - math.pi / 2
    full = arc_deg >= 360.0
    step = math.radians(arc_deg) / (count if full else max(count - 1, 1))
    return start + index * step


def intrinsics(width: int, height: int) -> np.ndarray:
    focal = (width / 2) / math.tan(math.radians(FOV_DEG) / 2)
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])


@functools.lru_cache(maxsize=512)
def render_orbit_view(
    index: int, count: int, size: tuple[int, int], seed: int, supersample: int, arc_deg: float = 360.0
) -> np.ndarray:
    """Pose `index` of a `count`-pose orbit, rendered upright as H×W×3 uint8 (cached: ~25 ms a view at
    320×240, 2×2 supersampled, and many test videos share their views)."""
    width, height = size
    s = supersample
    R, t = orbit_pose(_angle(index, count, seed, arc_deg))
    K_fine = np.diag([s, s, 1.0]) @ intrinsics(width, height)
    fine = render_view(R, t, K_fine, width * s, height * s, texture_atlas("auto", seed))
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
