"""daemon.handlers.splat.video: one customer video → its sharpest, upright, distinct frames as JPEGs.

Every video is made here (tests/videos.py: a camera orbiting a textured room, rendered and encoded with
PyAV), so the frames chosen can be checked against the known renders. No SfM here: the worker's
end-to-end test runs a video through the whole pipeline.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.errors import InputError
from daemon.handlers.sniff import describe_content, sniff_video
from daemon.handlers.splat.video import ExtractedFrames, FrameOptions, extract_frames
from daemon.handlers.splat.video_probe import probe_video
from daemon.samples.video import OrbitVideo
from tests import videos

UPRIGHT_MAD = 12.0
"""Mean absolute difference (0-255) under which a chosen frame is "the render": H.264 at CRF 20 plus
JPEG q95 and a few frames of camera motion stay near 5; a frame turned the wrong way is above 40."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def orbit(folder: Path) -> OrbitVideo:
    """8 s at 10 fps, one full turn around the room: 80 distinct views."""
    return videos.write_orbit_video(folder / "orbit.mp4", frames=80)


def extract(video: Path, out: Path, **options: object) -> ExtractedFrames:
    return extract_frames(video, out, FrameOptions(**options))  # type: ignore[arg-type]


def mad(path: Path, reference: np.ndarray) -> float:
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return float(np.abs(image - reference).mean())


def code_of(call: Callable[[], object]) -> InputError:
    with pytest.raises(InputError) as caught:
        call()
    assert not caught.value.retryable
    return caught.value


# --- choosing frames -----------------------------------------------------------------------------------


def test_one_frame_per_time_bucket_at_the_requested_fps(orbit: OrbitVideo, tmp_path: Path) -> None:
    # Given an 8 s video of a camera that never stops
    # When frames are extracted at 2 and at 1 per second
    two = extract(orbit.path, tmp_path / "two", fps=2.0)
    one = extract(orbit.path, tmp_path / "one", fps=1.0)

    # Then there is one frame per half second (per second), each inside its own bucket, in time order
    assert len(two.paths) == 16 and len(one.paths) == 8
    assert [int(t // 0.5) for t in two.times_s] == list(range(16))
    assert [int(t // 1.0) for t in one.times_s] == list(range(8))
    assert [p.name for p in two.paths] == [f"{i:04d}.jpg" for i in range(1, 17)]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [p.name for p in two.paths]
    assert two.blurred == [] and two.duplicates == []
    # and each file is the render of the frame it claims to be
    for path, number in zip(two.paths, two.frame_numbers, strict=True):
        assert mad(path, orbit.upright(number)) < UPRIGHT_MAD
    assert two.size == (320, 240) and two.video.frames_decoded == 80


def test_frame_count_spreads_buckets_over_the_whole_video(orbit: OrbitVideo, tmp_path: Path) -> None:
    # Given the same 8 s video
    # When 12 frames are asked for instead of a rate
    result = extract(orbit.path, tmp_path, frame_count=12)

    # Then 12 frames come out, one per twelfth of the video, first to last
    assert len(result.paths) == 12
    bucket = orbit.duration_s / 12
    assert [int(t // bucket) for t in result.times_s] == list(range(12))


def test_frames_are_downscaled_to_the_size_cap(orbit: OrbitVideo, tmp_path: Path) -> None:
    result = extract(orbit.path, tmp_path, frame_count=5, max_image_size=160)

    assert result.size == (160, 120)
    assert all(Image.open(p).size == (160, 120) for p in result.paths)


def test_blurred_frames_are_never_chosen_and_a_bucket_blurred_throughout_is_dropped(
    folder: Path, tmp_path: Path
) -> None:
    # Given a video where two frames in every half second are blurred, and the whole of 3.5-4.0 s
    blurred = {n for n in range(80) if n % 5 in (1, 3)} | set(range(35, 40))
    video = videos.write_orbit_video(folder / "blurred.mp4", frames=80, blur=sorted(blurred))

    # When frames are chosen at 2 per second
    result = extract(video.path, tmp_path, fps=2.0)

    # Then no blurred frame is among them, and the blurred-through bucket is reported, not kept
    assert not set(result.frame_numbers) & blurred
    assert result.blurred == [3.5]
    assert len(result.paths) == 15
    assert not any(3.5 <= t < 4.0 for t in result.times_s)


def test_a_still_segment_yields_one_frame(folder: Path, tmp_path: Path) -> None:
    # Given a video whose camera stands still from 2 s to 5 s (frames 20-49)
    video = videos.write_orbit_video(folder / "still.mp4", frames=80, still=(20, 30))

    # When frames are chosen at 2 per second
    result = extract(video.path, tmp_path, fps=2.0)

    # Then one frame shows the still view and the other five buckets are dropped as duplicates
    in_still = [t for t in result.times_s if 2.0 <= t < 5.0]
    assert len(in_still) == 1
    assert len(result.duplicates) == 5 and all(2.0 <= t < 5.0 for t in result.duplicates)
    assert len(result.paths) == 16 - 5


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_phone_video_gives_upright_frames(folder: Path, tmp_path: Path, rotation: int) -> None:
    # Given a phone video stored sideways (or upside down) with a display matrix that turns it back
    upright = (240, 320) if rotation in (90, 270) else (320, 240)
    video = videos.write_orbit_video(
        folder / f"rot{rotation}.mp4", frames=20, size=upright, rotation=rotation
    )
    # (the ffmpeg CLI, which autorotates as players do, shows the render upright: the file is right)
    played = videos.autorotated_first_frame(video.path, tmp_path / "played.png")
    assert played.shape[1::-1] == upright
    assert np.abs(played.astype(np.float32) - video.upright(0)).mean() < UPRIGHT_MAD

    # When frames are extracted
    result = extract(video.path, tmp_path / "frames", fps=4.0)

    # Then they are upright, the size is the upright one (portrait for 90/270), the rotation reported
    assert result.size == upright
    assert result.video.rotation == rotation
    assert (result.video.width, result.video.height) == (320, 240)  # as coded
    for path, number in zip(result.paths, result.frame_numbers, strict=True):
        assert Image.open(path).size == upright
        assert mad(path, video.upright(number)) < UPRIGHT_MAD


@pytest.mark.parametrize(
    ("name", "codec", "container", "codec_name"),
    [
        ("hevc.mp4", "libx265", "mp4", "hevc"),
        ("h264.mov", "libx264", "mov", "h264"),
        ("mpeg4.avi", "mpeg4", "avi", "mpeg4"),
        ("h264.mkv", "libx264", "matroska", "h264"),
        ("h264.ts", "libx264", "mpegts", "h264"),
    ],
)
def test_other_codecs_and_containers_decode(
    folder: Path, tmp_path: Path, name: str, codec: str, container: str, codec_name: str
) -> None:
    video = videos.write_orbit_video(folder / name, frames=30, codec=codec)

    result = extract(video.path, tmp_path, fps=2.0)

    assert (result.video.container, result.video.codec) == (container, codec_name)
    assert len(result.paths) == 6 and result.video.frames_decoded == 30
    assert mad(result.paths[2], video.upright(result.frame_numbers[2])) < UPRIGHT_MAD


def test_probe_reports_the_video(orbit: OrbitVideo) -> None:
    info = probe_video(orbit.path)

    assert (info.container, info.codec, info.width, info.height, info.rotation) == (
        "mp4",
        "h264",
        320,
        240,
        0,
    )
    assert info.duration_s == pytest.approx(8.0) and info.avg_fps == pytest.approx(10.0)


def test_same_bytes_give_the_same_jpeg_bytes(orbit: OrbitVideo, tmp_path: Path) -> None:
    # Given a copy of the video under another name
    copy = shutil.copy(orbit.path, tmp_path / "copy.mp4")

    # When both are extracted
    first = extract(orbit.path, tmp_path / "a", frame_count=6)
    second = extract(Path(copy), tmp_path / "b", frame_count=6)

    # Then the frames are byte for byte the same
    assert [p.read_bytes() for p in first.paths] == [p.read_bytes() for p in second.paths]


def test_a_rerun_replaces_the_frames_of_an_earlier_run(orbit: OrbitVideo, tmp_path: Path) -> None:
    (tmp_path / "0042.jpg").write_bytes(b"left by a run with more frames")

    result = extract(orbit.path, tmp_path, frame_count=5)

    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in result.paths]


def test_progress_rises_to_one(orbit: OrbitVideo, tmp_path: Path) -> None:
    seen: list[float] = []

    extract_frames(orbit.path, tmp_path, FrameOptions(), progress=seen.append)

    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 5


def test_decode_errors_on_a_few_frames_are_skipped(orbit: OrbitVideo, tmp_path: Path) -> None:
    # Given the video with the data of two frames in the middle zeroed
    damaged = videos.write_damaged(orbit.path, tmp_path / "damaged.mp4", packets=[44, 45])

    # When frames are extracted
    result = extract(damaged, tmp_path / "frames", fps=2.0)

    # Then the rest of the video still gives its frames
    assert result.video.frames_decoded == 78
    assert len(result.paths) == 16


# --- refusing what cannot be used ----------------------------------------------------------------------


def test_a_video_over_the_duration_cap_is_refused_from_its_header(orbit: OrbitVideo, tmp_path: Path) -> None:
    progress: list[float] = []

    error = code_of(
        lambda: extract_frames(orbit.path, tmp_path, FrameOptions(max_duration_s=5), progress=progress.append)
    )

    assert error.code == "video_too_long" and "orbit.mp4 is 8 s long" in error.message
    assert progress == [] and not list(tmp_path.iterdir())  # refused before decoding a frame


def test_a_video_whose_header_states_no_duration_is_refused_while_decoding(
    orbit: OrbitVideo, tmp_path: Path
) -> None:
    streamed = videos.write_streamed_mkv(orbit.path, tmp_path / "live.mkv")
    assert probe_video(streamed).duration_s == 0.0

    error = code_of(lambda: extract(streamed, tmp_path / "frames", max_duration_s=3))

    assert error.code == "video_too_long" and "found while decoding" in error.message
    assert not list((tmp_path / "frames").iterdir())  # the frames of the first 4 s are cleaned up
    # (under the cap, the duration reported is the one decoding found)
    assert extract(streamed, tmp_path / "all").video.duration_s == pytest.approx(8.0)


def test_too_few_sharp_frames(folder: Path, tmp_path: Path) -> None:
    # Given a 3 s video where the camera never moves
    video = videos.write_orbit_video(folder / "tripod.mp4", frames=30, still=(0, 30), supersample=1)

    # When frames are asked for at 2 per second
    error = code_of(lambda: extract(video.path, tmp_path))

    # Then the job fails saying what was found and what to do
    assert error.code == "too_few_sharp_frames"
    assert "1 usable frame(s), need at least 5" in error.message and "6 frames were chosen" in error.message
    assert "5 as duplicates" in error.message and "more frames per second" in error.message
    assert not list(tmp_path.iterdir())  # no half-written frames left behind


BROKEN: list[tuple[str, Callable[[Path], Path], str, str]] = [
    ("page.mp4", videos.write_html, "not_a_video", "an HTML page"),
    ("photo.mp4", videos.write_jpeg, "not_a_video", "a JPEG image"),
    ("truncated.mp4", videos.write_truncated_mp4, "corrupt_video", "damaged or incomplete"),
    ("garbage.mp4", videos.write_garbage_mp4, "corrupt_video", "starts like an MP4"),
    ("song.m4a", videos.write_audio_only, "audio_only", "only audio (aac)"),
    ("subtitles.mkv", videos.write_subtitles_only, "no_video_stream", "1 subtitle stream"),
    ("unknown.avi", videos.write_unknown_codec, "unsupported_codec", "fourcc 'XQZ9'"),
    ("zeroed.mp4", videos.write_undecodable, "no_decodable_frames", "no decodable frame"),
]


@pytest.mark.parametrize(("name", "make", "code", "says"), BROKEN, ids=[b[2] + "-" + b[0] for b in BROKEN])
def test_each_broken_input_has_its_own_code(
    tmp_path: Path, name: str, make: Callable[[Path], Path], code: str, says: str
) -> None:
    path = make(tmp_path / name)

    error = code_of(lambda: extract(path, tmp_path / "frames"))

    assert error.code == code
    assert name in error.message and says in error.message
    assert code_of(lambda: probe_video(path)).code == code


# --- recognising a video from its first bytes -----------------------------------------------------------


def test_sniff_video_names_the_container(orbit: OrbitVideo) -> None:
    assert sniff_video(orbit.path.read_bytes()[:512]) == "mp4"
    assert sniff_video(b"\0\0\0\x14ftypqt  \0\0\0\0qt  ") == "mov"
    assert sniff_video(b"RIFF\0\0\0\0AVI LIST") == "avi"
    assert sniff_video(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01") == "matroska"
    assert sniff_video(bytes([0x47] + [0] * 187) * 3) == "mpegts"
    assert sniff_video(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic") is None  # an iPhone photo
    assert sniff_video(b"<!DOCTYPE html><html>") is None
    assert sniff_video(b"\xff\xd8\xff\xe0\0\x10JFIF") is None


@pytest.mark.parametrize(
    ("head", "what"),
    [
        (b"\n<!DOCTYPE html>\n<html lang=en>", "an HTML page"),
        (b"\xff\xd8\xff\xe0\0\x10JFIF\0", "a JPEG image"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "a PNG image"),
        (b"Access denied. Please sign in.\n", "text"),
        (b"\x00\x01\x02\x03\xfe\xff\x00\x10", "unknown binary data"),
        (b"", "an empty file"),
    ],
)
def test_describe_content(head: bytes, what: str) -> None:
    assert describe_content(head) == what


class _OneVideoContext:
    """Just what `fetch_video` uses of a job's context: its spec, and a download that shows the
    first bytes of the file to `accept`, as the fetcher does."""

    def __init__(self, spec: dict, head: bytes) -> None:
        from daemon.handlers import parse_job

        self.spec = parse_job(spec)
        self.head = head

    def fetch_inputs(self, accept, *, max_bytes=None):
        accept("text/html", self.head)
        return []


def test_a_refused_video_is_named_by_its_redacted_url_never_the_presigned_one():
    # Given a splat_video job whose one input, unnamed, is a presigned URL serving a web page
    presigned = (
        "https://uploads.example.com/u1/clip.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20261204&X-Amz-Signature=deadbeefcafe"
    )
    spec = {"spec_version": 1, "job_id": "leak-1", "kind": "splat_video", "inputs": [{"url": presigned}]}
    ctx = _OneVideoContext(spec, b"<!doctype html><html><body>sign in</body></html>")
    from daemon.handlers.splat.frames import fetch_video

    # When its first bytes are judged
    with pytest.raises(InputError) as refused:
        fetch_video(ctx, ctx.spec.params)  # type: ignore[arg-type]
    # Then the error (which reaches the row, the callback, the log and Sentry) names the file by its
    # URL without the query string: no credential, no signature
    assert refused.value.code == "not_a_video"
    assert "https://uploads.example.com/u1/clip.mp4 is " in refused.value.message
    assert "X-Amz" not in refused.value.message and "deadbeef" not in refused.value.message


@pytest.mark.parametrize(
    "text",
    [
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{target}\n#EXT-X-ENDLIST\n",  # HLS playlist
        "ffconcat version 1.0\nfile '{target}'\n",  # FFmpeg's concat script
    ],
    ids=["hls", "concat"],
)
def test_a_playlist_is_never_handed_to_ffmpeg_to_follow(orbit: OrbitVideo, tmp_path: Path, text) -> None:
    # Given an upload that is a playlist naming another file, a real video that FFmpeg would gladly open
    # (and in a playlist a URL would be fetched the same way)
    upload = tmp_path / "clip.mp4"
    upload.write_text(text.format(target=orbit.path))
    # When it is probed as a video
    with pytest.raises(InputError) as refused:
        probe_video(upload)
    # Then it is refused from its first bytes as what it is, without FFmpeg ever opening it
    assert refused.value.code == "not_a_video"
    assert refused.value.message.startswith("clip.mp4 is not a video: it looks like text")
