"""Stage `frames` of the video splat handler: one customer video → its sharpest frames as JPEGs.

The timeline is cut into buckets (1/fps seconds each, or `frame_count` buckets over the whole video);
each bucket keeps its sharpest frame, measured as the variance of the Laplacian of the luma at a small
analysis size. Buckets whose best frame is still blurred compared with the rest of the video (a whip
pan) are dropped, then frames that show the same view as the previous kept frame (camera standing
still). What is left comes out as `0001.jpg`, `0002.jpg`, … in time order, as the photo stage writes
photos: 8-bit RGB converted by swscale from the stream's own colorspace, upright (the display matrix
applied), long side at most `max_image_size`, JPEG with full-resolution chroma.

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
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import av.logging
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from ...errors import InputError
from .inputs import NEAR_DUPLICATE_BITS, _save_jpeg, dhash, sniff_format

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

DURATION_SLACK_S = 1.0
"""A video may run this much over `max_duration_s` before it is refused: phones stop a "10:00"
recording a few frames late, and containers round their durations."""

VIDEO_CONTAINERS = {"mov": "mov", "mp4": "mp4", "avi": "avi", "matroska": "matroska", "mpegts": "mpegts"}
"""FFmpeg demuxer names we read (PyAV reports e.g. "mov,mp4,m4a,3gp,3g2,mj2") → the container name we
report. Anything else FFmpeg can open (a JPEG via image2, a GIF, an MP3…) is not a video for us."""

_CONTAINER_LABELS = {
    "mp4": "an MP4",
    "mov": "a MOV",
    "avi": "an AVI",
    "matroska": "an MKV/WebM",
    "mpegts": "an MPEG-TS",
}

# What FFmpeg raises for data it cannot make sense of; other FFmpegErrors (a missing file, memory) are
# not the customer's doing and go up unchanged.
_BAD_DATA = (av.error.InvalidDataError, av.error.EOFError, av.error.PatchWelcomeError)

# ISO-BMFF major brands of HEIF/AVIF still images and image sequences: not videos.
_IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")

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
    max_duration_s: float = 600.0
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
class VideoInfo:
    # Container family: "mp4", "mov", "avi", "matroska" or "mpegts".
    container: str
    # FFmpeg's name of the video codec ("h264", "hevc", …).
    codec: str
    # Coded size, as stored in the file (before rotation).
    width: int
    height: int
    # Degrees the frames were turned counter-clockwise to make them upright (0, 90, 180, 270).
    rotation: int
    # From the header; when it states none, measured while decoding (so 0.0 from probe_video).
    duration_s: float
    avg_fps: float
    # Frames decoded (0 from probe_video, which reads one frame only).
    frames_decoded: int


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


@dataclass
class _Opened:
    container: av.container.InputContainer
    stream: av.VideoStream
    info: VideoInfo
    name: str
    skipped: list[int] = field(default_factory=lambda: [0])


# -- recognising a video from its first bytes -----------------------------------------------------


def sniff_video(head: bytes) -> str | None:
    """The container family from a file's first bytes ("mp4", "mov", "avi", "matroska", "mpegts"),
    or None if they are not a video container we read. Pass at least 400 bytes: MPEG-TS is only
    recognised from the sync bytes of three packets."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return None
        return "mov" if brand == b"qt  " else "mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mov"  # QuickTime files from before `ftyp` existed start straight with an atom
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # EBML header: Matroska or WebM
    for offset, stride in ((0, 188), (4, 192)):  # plain TS, and Blu-ray M2TS with a 4-byte prefix
        starts = range(offset, min(len(head), offset + 3 * stride), stride)
        if len(starts) == 3 and all(head[i] == 0x47 for i in starts):
            return "mpegts"
    return None


def describe_content(head: bytes) -> str:
    """What a file that is not a video looks like, for error messages ("an HTML page", "a JPEG
    image", "text", …)."""
    if not head:
        return "an empty file"
    image = sniff_format(head)
    if image is not None:
        return f"a {image} image"
    for magic, what in (
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"ID3", "an MP3 audio file"),
        (b"OggS", "an Ogg file"),
        (b"fLaC", "a FLAC audio file"),
    ):
        if head.startswith(magic):
            return what
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "a WAV audio file"
    if head[4:8] == b"ftyp" and head[8:11] == b"M4A":
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


def _as_text(head: bytes) -> str | None:
    """`head` as text if it is UTF-8 (a character cut at the end is fine) without control bytes."""
    text = head.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    text = text[:-1] if text.endswith("\ufffd") else text
    if "\ufffd" in text or any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return None
    return text


# -- opening and checking -------------------------------------------------------------------------


def probe_video(path: Path) -> VideoInfo:
    """Open `path` and check that it is a video we can decode (container, streams, codec, duration
    within the default cap, one decodable frame); raise InputError saying what is wrong if not."""
    with _open(path, FrameOptions()) as opened:
        rotation = 0
        for _, frame in _frames(opened):
            rotation = _rotation(frame)
            break
        else:
            raise _no_frames(opened)
        return replace(opened.info, rotation=rotation)


@contextmanager
def _open(path: Path, options: FrameOptions) -> Iterator[_Opened]:
    """Open and check a video; the container is closed on leaving the `with` block."""
    opened = _open_checked(path, options)
    try:
        yield opened
    finally:
        opened.container.close()


def _open_checked(path: Path, options: FrameOptions) -> _Opened:
    name = path.name
    with path.open("rb") as src:
        head = src.read(4096)
    if not head:
        raise InputError(f"{name} is empty (0 bytes), not a video", code="not_a_video")
    family = sniff_video(head)
    try:
        container = av.open(str(path), mode="r", metadata_errors="replace")
    except _BAD_DATA as exc:
        if family is None:
            raise _not_a_video(name, describe_content(head)) from None
        raise InputError(
            f"{name} starts like {_CONTAINER_LABELS[family]} video but cannot be read ({_reason(exc)}): "
            "the file is damaged or incomplete (an interrupted upload or recording?): export or upload "
            "it again",
            code="corrupt_video",
        ) from None
    try:
        return _check_streams(container, name, head, family, options)
    except BaseException:
        container.close()
        raise


def _check_streams(
    container: av.container.InputContainer, name: str, head: bytes, family: str | None, options: FrameOptions
) -> _Opened:
    demuxers = container.format.name.split(",")
    known = [VIDEO_CONTAINERS[d] for d in demuxers if d in VIDEO_CONTAINERS]
    videos = [
        s
        for s in container.streams.video
        if not s.disposition & av.stream.Disposition.attached_pic  # cover art of a song
    ]
    audios = list(container.streams.audio)
    if not videos and audios:
        codecs = ", ".join(sorted({a.codec_context.name for a in audios if a.codec_context}))
        raise InputError(
            f"{name} contains only audio ({codecs or 'unknown codec'}), no video: upload the video itself",
            code="audio_only",
        )
    if not known:
        what = describe_content(head)
        if what == "unknown binary data":
            what = f"a {container.format.long_name} file"
        raise _not_a_video(name, what)
    if not videos:
        kinds = Counter(s.type for s in container.streams)
        holds = ", ".join(f"{n} {kind} stream{'s' * (n > 1)}" for kind, n in sorted(kinds.items()))
        raise InputError(
            f"{name} is {_CONTAINER_LABELS[known[0]]} file without a video or audio stream "
            f"(it holds {holds or 'no streams at all'})",
            code="no_video_stream",
        )
    best = container.streams.best("video")  # FFmpeg's choice: the default stream, else the largest
    stream = best if isinstance(best, av.VideoStream) and best in videos else videos[0]
    if stream.codec_context is None:  # FFmpeg has no decoder for it (or does not know the codec at all)
        raise InputError(
            f"{name}: its video codec ({_codec_label(container, stream)}) cannot be decoded here; "
            "export it again as H.264 or H.265 (HEVC) in an MP4 or MOV file",
            code="unsupported_codec",
        )
    codec = stream.codec_context.name
    duration = _duration_s(container, stream)
    if duration > options.max_duration_s + DURATION_SLACK_S:
        raise _too_long(name, f"is {_minutes(duration)} long", options)
    rate = float(stream.average_rate) if stream.average_rate else 0.0
    if not rate and duration and stream.frames:
        rate = stream.frames / duration
    info = VideoInfo(
        container=family if family in ("mp4", "mov") else known[0],
        codec=codec,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        rotation=0,
        duration_s=duration,
        avg_fps=rate,
        frames_decoded=0,
    )
    stream.codec_context.thread_type = "AUTO"  # frame + slice threads: decoding is most of the cost
    return _Opened(container, stream, info, name)


def _duration_s(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    """The video stream's duration from the header, else the container's, else 0.0 (unknown)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def _codec_label(container: av.container.InputContainer, stream: av.VideoStream) -> str:
    """FFmpeg's description of an undecodable stream, e.g. "none (XQZ9 / 0x395A5158)": PyAV exposes
    the codec tag only through a decoder, so read it from FFmpeg's own dump of the format."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)  # the dump is logged at INFO; PyAV captures it
    try:
        dump: str = getattr(container, "dumps_format")()  # noqa: B009 - missing from PyAV's stubs
    finally:
        av.logging.set_level(previous)
    match = re.search(rf"Stream #0:{stream.index}\S*: Video: ([^,\n]+)", dump)
    if match is None:
        return "unknown codec"
    label = match.group(1).strip()
    fourcc = re.search(r"\((\S{4}) / 0x[0-9A-Fa-f]+\)", label)
    if label.startswith("none") and fourcc:
        return f"unknown codec, fourcc '{fourcc.group(1)}'"
    return label


# -- decoding -------------------------------------------------------------------------------------


def _frames(opened: _Opened) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decoded frames in presentation order with their 0-based number. Packets that fail to decode
    are skipped and counted in `opened.skipped[0]`; a file that ends early ends the iteration (the
    frames before the damage are good)."""
    stream = opened.stream
    number = 0
    packets = opened.container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except _BAD_DATA as exc:
            if number == 0:
                raise InputError(
                    f"{opened.name} is {_CONTAINER_LABELS[opened.info.container]} file whose data cannot be "
                    f"read ({_reason(exc)}): the file is damaged; export or upload it again",
                    code="corrupt_video",
                ) from None
            log.warning(
                "%s: container unreadable after %d frames (%s); using those",
                opened.name,
                number,
                _reason(exc),
            )
            return
        try:
            frames = stream.decode(packet)
        except _BAD_DATA as exc:
            opened.skipped[0] += 1
            if opened.skipped[0] <= 3:
                log.warning(
                    "%s: a packet at %s failed to decode (%s); skipped",
                    opened.name,
                    _seconds(packet.pts, packet.time_base),
                    _reason(exc),
                )
            continue
        for frame in frames:
            if frame.is_corrupt:  # the decoder concealed errors in it: smeared blocks, not the scene
                opened.skipped[0] += 1
                continue
            yield number, frame
            number += 1


def _rotation(frame: av.VideoFrame) -> int:
    """The frame's display rotation as 0, 90, 180 or 270 degrees counter-clockwise."""
    degrees = frame.rotation or 0
    quarter = round(degrees / 90) % 4 * 90
    if abs(((degrees - quarter) + 180) % 360 - 180) > 1:
        log.warning("display rotation %s° is not a multiple of 90°; using %d°", degrees, quarter)
    return quarter


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
        with _open(path, options) as opened:
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
    opened: _Opened,
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
    for number, frame in _frames(opened):
        if start is None:
            start = frame.time if frame.time is not None else 0.0
            rotation = _rotation(frame)
        decoded += 1
        t = (frame.time - start) if frame.time is not None else number / (info.avg_fps or 30.0)
        if t > options.max_duration_s + DURATION_SLACK_S:
            raise _too_long(opened.name, f"runs past {_minutes(t)} (found while decoding)", options)
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
        raise _no_frames(opened)
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
    _save_jpeg(image, path, options.jpeg_quality)
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
    opened: _Opened,
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


def _not_a_video(name: str, what: str) -> InputError:
    return InputError(
        f"{name} is not a video: it looks like {what}. Upload an MP4, MOV, AVI, MKV/WebM or MPEG-TS video",
        code="not_a_video",
    )


def _no_frames(opened: _Opened) -> InputError:
    skipped = opened.skipped[0]
    return InputError(
        f"{opened.name}: the {opened.info.codec} video stream holds no decodable frame "
        f"({skipped} packets or frames failed to decode); the file is damaged: export or upload it again",
        code="no_decodable_frames",
    )


def _too_long(name: str, what: str, options: FrameOptions) -> InputError:
    return InputError(
        f"{name} {what}; videos are limited to {_minutes(options.max_duration_s)} (max_duration_s): "
        "trim it to the part that walks around the subject",
        code="video_too_long",
    )


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


def _reason(exc: Exception) -> str:
    """FFmpeg's message without PyAV's errno prefix and our temporary file's path."""
    return getattr(exc, "strerror", None) or str(exc)


def _seconds(pts: int | None, time_base: object) -> str:
    if pts is None or time_base is None:
        return "an unknown time"
    return f"{float(pts * time_base):.2f} s"  # type: ignore[operator]


def _minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if rest else f"{minutes} min"
