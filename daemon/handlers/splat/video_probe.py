"""Recognising a customer's video and checking it before any frame is chosen.

Two checks. From a file's first bytes (`sniff_video`, `describe_content` in `handlers/sniff.py`),
before the download finishes: is it a video container we read (MP4, MOV, AVI, MKV/WebM, MPEG-TS), and
if not, what does it look like, for the error message. After the download (`open_video`,
`probe_video`): does FFmpeg open it, does it hold a video stream, is that stream's codec decodable
here, is it within the duration cap, and does it decode to at least one frame. `decoded_frames` is
the packet loop both this check and the frame selection in `video` read through: it skips packets
that fail to decode and ends at damage that stops the container.

Raises InputError with the codes `not_a_video`, `corrupt_video`, `audio_only`, `no_video_stream`,
`unsupported_codec`, `video_too_long` and `no_decodable_frames`. FFmpeg errors that are not about the
file's data (a missing file, memory) go up unchanged.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import av.logging

from ...errors import InputError
from ..sniff import describe_content, sniff_video

log = logging.getLogger(__name__)

MAX_DURATION_S = 600.0
"""Default cap on a video's length in seconds (`FrameOptions.max_duration_s`, and what `probe_video`
checks against): ten minutes is far more than a walk around one subject takes."""

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


@dataclass
class Opened:
    container: av.container.InputContainer
    stream: av.VideoStream
    info: VideoInfo
    name: str
    skipped: list[int] = field(default_factory=lambda: [0])


# -- opening and checking -------------------------------------------------------------------------


def probe_video(path: Path) -> VideoInfo:
    """Open `path` and check that it is a video we can decode (container, streams, codec, duration
    within the default cap, one decodable frame); raise InputError saying what is wrong if not."""
    with open_video(path, MAX_DURATION_S) as opened:
        rotation = 0
        for _, frame in decoded_frames(opened):
            rotation = display_rotation(frame)
            break
        else:
            raise no_frames(opened)
        return replace(opened.info, rotation=rotation)


DEMUXERS = {"mp4": "mov", "mov": "mov", "avi": "avi", "matroska": "matroska", "mpegts": "mpegts"}
"""The FFmpeg demuxer for each container family `sniff_video` names (FFmpeg reads MP4 and MOV alike)."""


@contextmanager
def open_video(path: Path, max_duration_s: float) -> Iterator[Opened]:
    """Open and check a video; the container is closed on leaving the `with` block."""
    opened = _open_checked(path, max_duration_s)
    try:
        yield opened
    finally:
        opened.container.close()


def _open_checked(path: Path, max_duration_s: float) -> Opened:
    name = path.name
    with path.open("rb") as src:
        head = src.read(4096)
    if not head:
        raise InputError(f"{name} is empty (0 bytes), not a video", code="not_a_video")
    family = sniff_video(head)
    if family is None:
        # Never let FFmpeg guess: its probe knows hundreds of formats, playlists among them (HLS, concat)
        # that open other files and URLs. A file is opened only as the container its bytes say it is.
        raise _not_a_video(name, describe_content(head))
    try:
        container = av.open(str(path), mode="r", format=DEMUXERS[family], metadata_errors="replace")
    except _BAD_DATA as exc:
        raise InputError(
            f"{name} starts like {_CONTAINER_LABELS[family]} video but cannot be read ({_reason(exc)}): "
            "the file is damaged or incomplete (an interrupted upload or recording?): export or upload "
            "it again",
            code="corrupt_video",
        ) from None
    try:
        return _check_streams(container, name, head, family, max_duration_s)
    except BaseException:
        container.close()
        raise


def _check_streams(
    container: av.container.InputContainer, name: str, head: bytes, family: str | None, max_duration_s: float
) -> Opened:
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
    if duration > max_duration_s + DURATION_SLACK_S:
        raise too_long(name, f"is {minutes(duration)} long", max_duration_s)
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
    return Opened(container, stream, info, name)


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


# -- reading frames -------------------------------------------------------------------------------


def decoded_frames(opened: Opened) -> Iterator[tuple[int, av.VideoFrame]]:
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


def display_rotation(frame: av.VideoFrame) -> int:
    """The frame's display rotation as 0, 90, 180 or 270 degrees counter-clockwise."""
    degrees = frame.rotation or 0
    quarter = round(degrees / 90) % 4 * 90
    if abs(((degrees - quarter) + 180) % 360 - 180) > 1:
        log.warning("display rotation %s° is not a multiple of 90°; using %d°", degrees, quarter)
    return quarter


# -- errors and their wording ---------------------------------------------------------------------


def _not_a_video(name: str, what: str) -> InputError:
    return InputError(
        f"{name} is not a video: it looks like {what}. Upload an MP4, MOV, AVI, MKV/WebM or MPEG-TS video",
        code="not_a_video",
    )


def no_frames(opened: Opened) -> InputError:
    skipped = opened.skipped[0]
    return InputError(
        f"{opened.name}: the {opened.info.codec} video stream holds no decodable frame "
        f"({skipped} packets or frames failed to decode); the file is damaged: export or upload it again",
        code="no_decodable_frames",
    )


def too_long(name: str, what: str, max_duration_s: float) -> InputError:
    return InputError(
        f"{name} {what}; videos are limited to {minutes(max_duration_s)} (max_duration_s): "
        "trim it to the part that walks around the subject",
        code="video_too_long",
    )


def _reason(exc: Exception) -> str:
    """FFmpeg's message without PyAV's errno prefix and our temporary file's path."""
    return getattr(exc, "strerror", None) or str(exc)


def _seconds(pts: int | None, time_base: object) -> str:
    if pts is None or time_base is None:
        return "an unknown time"
    return f"{float(pts * time_base):.2f} s"  # type: ignore[operator]


def minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    whole, rest = divmod(round(seconds), 60)
    return f"{whole} min {rest:02d} s" if rest else f"{whole} min"
