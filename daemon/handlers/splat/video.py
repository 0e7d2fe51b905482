"""Stage `frames` of the video splat handler: one customer video → its sharpest frames as JPEGs.

The video is opened and checked by `video_probe` (container, stream, codec, duration); this module
decodes it and chooses the frames. The timeline is cut into buckets (1/fps seconds each, or
`frame_count` buckets over the whole video); each bucket keeps its sharpest frame, measured as the
variance of the Laplacian of the luma at a small analysis size. Buckets whose best frame is still
blurred compared with the rest of the video (a whip pan) are dropped, then frames that show the same
view as the previous kept frame (camera standing still). What is left comes out as `0001.jpg`,
`0002.jpg`, … in time order, as the photo stage writes photos: 8-bit RGB converted by swscale from the
stream's own colorspace, upright (the display matrix applied), long side at most `max_image_size`, JPEG
with full-resolution chroma.

Decoding is PyAV (FFmpeg) in-process. PyAV leaves the phone's rotation to us: `VideoFrame.rotation` is
the display matrix's angle in degrees counter-clockwise, and turning the decoded picture that way
counter-clockwise gives what players show (checked against the ffmpeg CLI, which autorotates).

Memory stays at one decoded frame per open bucket (only one bucket is open at a time) plus the
decoder's own frames: a bucket's best frame is converted to RGB and written to disk when the bucket
closes, and only its hash and sharpness are kept. The output is a pure function of the input bytes
and options, so a retried job writes the same files.

Not handled: mirrored display matrices (only the rotation is applied), anamorphic pixels (the sample
aspect ratio is ignored) and HDR transfer curves (HLG/PQ frames are converted as if SDR: washed out).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from ...errors import InputError
from .inputs import NEAR_DUPLICATE_BITS, dhash, save_jpeg
from .video_probe import (
    DURATION_SLACK_S,
    MAX_DURATION_S,
    Opened,
    VideoInfo,
    decoded_frames,
    display_rotation,
    minutes,
    no_frames,
    open_video,
    too_long,
)

log = logging.getLogger(__name__)


BLUR_FRACTION = 0.3
"""A bucket whose best frame is less sharp than this fraction of the median sharpness of all
buckets' best frames is dropped as blurred. Measured on the orbit test videos (320×240, H.264 CRF
20, sharpness relative to the median): steady frames 0.65-1.1; Gaussian blur of 1 px 0.04-0.14 and
of 4 px 0.003; horizontal motion blur over 5 px 0.30-0.47, 9 px 0.17-0.30, 15 px 0.09-0.16. So 0.3
drops a bucket smeared by a pan of about 3 % of the frame width or more, and leaves a factor of two
below the least sharp steady frame for views that simply show less texture than the median."""

ANALYSIS_LONG_SIDE = 480
"""Long side (px) of the grey picture sharpness is measured on. Blur worth rejecting (a few pixels at
1080p) survives a 4× area reduction, which also averages sensor noise away. Measured per 1080p frame
here: the reduction 0.4-0.5 ms with a reused swscale context, the Laplacian 0.26 ms, against 2.9 ms
for decoding (H.264, 2 threads)."""

# Display-matrix angle (counter-clockwise) → the transpose that turns the decoded picture upright.
_UPRIGHT = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class FrameOptions:
    # Frames wanted per second of video: one per time bucket of 1/fps seconds.
    fps: float = 2.0
    # Instead of fps: this many buckets spread over the whole video.
    frame_count: int | None = None
    # Longer videos are refused (video_too_long): checked from the header before decoding, and again
    # while decoding (a header may state no duration, or a wrong one).
    max_duration_s: float = MAX_DURATION_S
    # Long side of the output frames, in pixels; larger videos are downscaled, smaller ones kept.
    max_image_size: int = 1600
    # Fewer frames than this left after dropping blurred and duplicate ones fails the job.
    min_frames: int = 5
    # Quality of the output JPEGs (chroma is kept at full resolution).
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if not self.fps > 0 or (self.frame_count is not None and self.frame_count < 1):
            raise ValueError(f"fps must be > 0 and frame_count ≥ 1 (got {self.fps}, {self.frame_count})")


@dataclass(frozen=True)
class ExtractedFrames:
    # out_dir/0001.jpg, 0002.jpg … in time order.
    paths: list[Path]
    # Presentation time of each chosen frame, seconds from the first frame.
    times_s: list[float]
    # 0-based index of each chosen frame in the decoder's output order (presentation order).
    frame_numbers: list[int]
    # Variance of the Laplacian of each chosen frame's luma at the analysis size.
    sharpness: list[float]
    # (width, height) of the output frames, upright.
    size: tuple[int, int]
    video: VideoInfo
    # Start times of buckets dropped because even their best frame was blurred.
    blurred: list[float]
    # Times of chosen frames dropped as near-duplicates of the previous kept frame (camera still).
    duplicates: list[float]


@dataclass
class _Bucket:
    """The open time bucket: its best frame so far (the only decoded frame we hold on to)."""

    index: int
    start_s: float
    frame: av.VideoFrame | None = None
    number: int = -1
    time_s: float = 0.0
    sharpness: float = -1.0


@dataclass(frozen=True)
class _Candidate:
    """A closed bucket's best frame, already written to disk under a temporary name."""

    start_s: float
    time_s: float
    number: int
    sharpness: float
    dhash: int
    path: Path


# -- sharpness -------------------------------------------------------------------------------------


def sharpness(frame: av.VideoFrame, reformatter: VideoReformatter | None = None) -> float:
    """Variance of the Laplacian of the frame's luma, at `ANALYSIS_LONG_SIDE` at most. Higher is
    sharper; it compares frames of one video, not of different videos. Pass the same `reformatter`
    for every frame of a video: `frame.reformat` builds a new swscale context for each frame, which
    costs more than the reduction itself."""
    scale = min(1.0, ANALYSIS_LONG_SIDE / max(frame.width, frame.height))
    width, height = max(3, round(frame.width * scale)), max(3, round(frame.height * scale))
    grey = (reformatter or VideoReformatter()).reformat(
        frame, width=width, height=height, format="gray", interpolation="AREA"
    )
    return laplacian_variance(grey.to_ndarray())


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D grey image (the classic blur measure)."""
    y = grey.astype(np.float32)
    laplacian = y[1:-1, :-2] + y[1:-1, 2:] + y[:-2, 1:-1] + y[2:, 1:-1] - 4 * y[1:-1, 1:-1]
    return float(laplacian.var())


# -- the stage ------------------------------------------------------------------------------------


def extract_frames(
    path: Path,
    out_dir: Path,
    options: FrameOptions,
    *,
    progress: Callable[[float], None] = lambda f: None,
) -> ExtractedFrames:
    """Write the sharpest frame of each time bucket of the video at `path` into `out_dir` as
    `0001.jpg`… (earlier numbered JPEGs there are replaced); raise InputError if the video is
    unusable or fewer than `options.min_frames` frames are left."""
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("[0-9][0-9][0-9][0-9].jpg"), *out_dir.glob(".candidate-*.jpg")]:
        stale.unlink()
    candidates: list[_Candidate] = []  # on disk as their buckets close; all but the kept are removed
    try:
        with open_video(path, options.max_duration_s) as opened:
            info = _choose(opened, out_dir, options, candidates, progress)
        kept, blurred, duplicates = _filter(candidates)
        _log_summary(opened, info, len(candidates), kept, blurred, duplicates, time.monotonic() - started)
        if len(kept) < options.min_frames:
            raise InputError(
                _too_few_message(opened.name, options, info, candidates, kept, blurred, duplicates),
                code="too_few_sharp_frames",
            )
        paths = []
        for number, candidate in enumerate(kept, start=1):
            final = out_dir / f"{number:04d}.jpg"
            os.replace(candidate.path, final)
            paths.append(final)
    finally:
        for candidate in candidates:
            candidate.path.unlink(missing_ok=True)
    progress(1.0)
    return ExtractedFrames(
        paths=paths,
        times_s=[c.time_s for c in kept],
        frame_numbers=[c.number for c in kept],
        sharpness=[c.sharpness for c in kept],
        size=_output_size(info, options),
        video=info,
        blurred=[c.start_s for c in blurred],
        duplicates=[c.time_s for c in duplicates],
    )


def _choose(
    opened: Opened,
    out_dir: Path,
    options: FrameOptions,
    candidates: list[_Candidate],
    progress: Callable[[float], None],
) -> VideoInfo:
    """Decode everything and keep the sharpest frame of each bucket, writing it to disk as the bucket
    closes and appending it to `candidates` (in time order). Returns the video's info completed with
    its rotation and frame count."""
    info = opened.info
    duration = info.duration_s
    width_s = 1.0 / options.fps
    if options.frame_count is not None:
        if duration > 0:
            width_s = duration / options.frame_count
        else:
            log.warning(
                "%s states no duration: %s frames per second instead of %d frames in all",
                opened.name,
                options.fps,
                options.frame_count,
            )
    last_bucket = options.frame_count - 1 if options.frame_count is not None and duration > 0 else None
    analysis, output = VideoReformatter(), VideoReformatter()  # one swscale context each, reused
    bucket: _Bucket | None = None
    start: float | None = None
    rotation = 0
    decoded = 0
    t = 0.0
    for number, frame in decoded_frames(opened):
        if start is None:
            start = frame.time if frame.time is not None else 0.0
            rotation = display_rotation(frame)
        decoded += 1
        t = (frame.time - start) if frame.time is not None else number / (info.avg_fps or 30.0)
        if t > options.max_duration_s + DURATION_SLACK_S:
            raise too_long(
                opened.name, f"runs past {minutes(t)} (found while decoding)", options.max_duration_s
            )
        index = int(t / width_s + 1e-6)
        if last_bucket is not None:
            index = min(index, last_bucket)
        if bucket is None or index > bucket.index:
            if bucket is not None:
                candidates.append(_close(bucket, out_dir, rotation, options, output))
                if duration > 0:
                    progress(min(t / duration, 0.99))
            bucket = _Bucket(index, index * width_s)
        score = sharpness(frame, analysis)
        if score > bucket.sharpness:  # the first of equally sharp frames wins: deterministic
            bucket.frame, bucket.number, bucket.time_s, bucket.sharpness = frame, number, t, score
    if bucket is not None:
        candidates.append(_close(bucket, out_dir, rotation, options, output))
    if decoded == 0:
        raise no_frames(opened)
    if not duration:  # the header stated none: what decoding found (the last frame lasts 1/fps)
        duration = t + (1 / info.avg_fps if info.avg_fps else 0.0)
    avg_fps = info.avg_fps or (decoded / duration if duration else 0.0)
    return replace(info, rotation=rotation, frames_decoded=decoded, duration_s=duration, avg_fps=avg_fps)


def _close(
    bucket: _Bucket, out_dir: Path, rotation: int, options: FrameOptions, reformatter: VideoReformatter
) -> _Candidate:
    """Convert the bucket's best frame to upright RGB at the output size and write it to disk."""
    assert bucket.frame is not None
    width, height = _scaled(bucket.frame.width, bucket.frame.height, options.max_image_size)
    # swscale converts from the frame's own colorspace and range (BT.601/709, limited/full).
    rgb = reformatter.reformat(
        bucket.frame, width=width, height=height, format="rgb24", interpolation="LANCZOS"
    )
    image = Image.fromarray(rgb.to_ndarray())
    if rotation:
        image = image.transpose(_UPRIGHT[rotation])
    path = out_dir / f".candidate-{bucket.index:06d}.jpg"
    save_jpeg(image, path, options.jpeg_quality)
    bucket.frame = None  # let the decoder have its buffer back
    return _Candidate(bucket.start_s, bucket.time_s, bucket.number, bucket.sharpness, dhash(image), path)


def _filter(candidates: list[_Candidate]) -> tuple[list[_Candidate], list[_Candidate], list[_Candidate]]:
    """(kept, blurred, duplicates): drop buckets blurred next to the video's median, then frames
    showing the same view as the previous kept one."""
    if not candidates:
        return [], [], []
    threshold = BLUR_FRACTION * statistics.median(c.sharpness for c in candidates)
    kept: list[_Candidate] = []
    blurred: list[_Candidate] = []
    duplicates: list[_Candidate] = []
    for candidate in candidates:
        if candidate.sharpness < threshold:
            blurred.append(candidate)
        elif kept and (candidate.dhash ^ kept[-1].dhash).bit_count() <= NEAR_DUPLICATE_BITS:
            duplicates.append(candidate)
        else:
            kept.append(candidate)
    return kept, blurred, duplicates


def _log_summary(
    opened: Opened,
    info: VideoInfo,
    buckets: int,
    kept: list[_Candidate],
    blurred: list[_Candidate],
    duplicates: list[_Candidate],
    elapsed: float,
) -> None:
    log.info(
        "video %s: %s %s %dx%d rot %d°, %.1f s at %.1f fps | decoded %d (%d skipped) | %d buckets: "
        "%d blurred, %d duplicates, %d kept | %.1f s, %.0f frames/s",
        opened.name, info.container, info.codec, info.width, info.height, info.rotation,
        info.duration_s, info.avg_fps, info.frames_decoded, opened.skipped[0],
        buckets, len(blurred), len(duplicates), len(kept), elapsed, info.frames_decoded / max(elapsed, 1e-6),
    )  # fmt: skip


# -- small helpers --------------------------------------------------------------------------------


def _scaled(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _output_size(info: VideoInfo, options: FrameOptions) -> tuple[int, int]:
    width, height = _scaled(info.width, info.height, options.max_image_size)
    return (height, width) if info.rotation in (90, 270) else (width, height)


def _too_few_message(
    name: str,
    options: FrameOptions,
    info: VideoInfo,
    candidates: list[_Candidate],
    kept: list[_Candidate],
    blurred: list[_Candidate],
    duplicates: list[_Candidate],
) -> str:
    spacing = (
        f"{options.frame_count} spread over the video"
        if options.frame_count is not None
        else f"{options.fps:g} per second of {info.duration_s:.1f} s"
    )
    return (
        f"{name}: {len(kept)} usable frame(s), need at least {options.min_frames} (min_images): "
        f"{len(candidates)} frames were chosen ({spacing}), {len(blurred)} dropped as blurred and "
        f"{len(duplicates)} as "
        "duplicates of the previous frame (camera standing still). Ask for more frames per second, or "
        "film a longer, slower and steadier walk around the subject"
    )
