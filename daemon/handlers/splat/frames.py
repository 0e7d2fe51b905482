"""The `splat_video` job's own steps: fetch one video (refused early when it is not one or too large),
then stage `frames`, which chooses the sharp frames that SfM and training use as photos.

The frames land where a photo job's normalised photos do (`Workspace.images`, `0001.jpg`…), and the
stage record carries the same `paths` and `sources` keys, so every later stage is the photo job's.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...errors import InputError
from ..base import Context
from .params_video import SplatVideoParams
from .workspace import Workspace

MIB = 1024 * 1024


def fetch_video(ctx: Context, params: SplatVideoParams) -> list[Path]:
    """Download the job's one video under its size cap, stopping at the first bytes if they are not
    a video container (a web page or a photo where a video was expected)."""
    from ..sniff import describe_content, sniff_video

    item = ctx.spec.inputs[0]
    name = item.label  # never the URL itself: a presigned URL's query string is a credential

    def accept(content_type: str, head: bytes) -> bool:
        if sniff_video(head) is None:
            raise InputError(
                f"{name} is {describe_content(head)} (served as {content_type or 'no content type'}), "
                "not a video: a splat_video job takes one MP4, MOV, AVI or MKV file",
                code="not_a_video",
            )
        return True

    try:
        return list(ctx.fetch_inputs(accept, max_bytes=params.max_video_mb * MIB))
    except InputError as exc:
        if exc.code != "input_too_large":
            raise
        raise InputError(
            f"{exc.message}: this job takes videos up to max_video_mb = {params.max_video_mb} MiB "
            "(and the daemon's DOWNLOAD_MAX_BYTES)",
            code="video_too_large",
        ) from None


def choose_frames(
    ws: Workspace, video: Path, params: SplatVideoParams, progress: Callable[[float], None]
) -> dict[str, Any]:
    """Stage `frames`: the sharpest frame of each time slice, upright, minus blurred and still ones."""
    done = ws.reused("frames")
    if done is not None:
        return done
    from .video import FrameOptions, extract_frames

    options = FrameOptions(
        fps=params.fps,
        frame_count=params.frame_count,
        max_duration_s=params.max_duration_s,
        max_image_size=params.max_image_size,
        min_frames=params.min_images,
    )
    shutil.rmtree(ws.images, ignore_errors=True)  # a half-written earlier run: its frames may differ
    chosen = extract_frames(video, ws.images, options, progress=progress)
    summary = {
        "video": asdict(chosen.video),
        "paths": [p.name for p in chosen.paths],
        "sources": [f"{video.name} @ {t:.3f} s" for t in chosen.times_s],
        "times_s": [round(t, 4) for t in chosen.times_s],
        "frame_numbers": chosen.frame_numbers,
        "size": list(chosen.size),
        "blurred_s": [round(t, 4) for t in chosen.blurred],
        "duplicates_s": [round(t, 4) for t in chosen.duplicates],
    }
    ws.record("frames", summary)
    return summary


def manifest_section(frames: dict[str, Any]) -> dict[str, Any]:
    """What the manifest says about the video and the frames chosen from it."""
    return {
        "video": frames["video"],
        "chosen": len(frames["paths"]),
        "times_s": frames["times_s"],
        "size": frames["size"],
        "dropped_blurred": len(frames["blurred_s"]),
        "dropped_still": len(frames["duplicates_s"]),
    }
