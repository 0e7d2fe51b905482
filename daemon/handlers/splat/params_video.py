"""Parameters of the "splat_video" job kind (one video → sharp frames → 3D Gaussian splat).

Pydantic only, like `params`: the daemon validates specs without importing the training stack.
Every training parameter of the photo job applies unchanged; these add how frames are chosen and the
limits a video must fit. `min_images` counts the frames left after blurred and still ones are dropped.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from .params import SplatParams

MAX_FRAMES = 2000
"""Most frames a video job may choose, as many as a photo job's inputs (`MAX_INPUTS`): more buys no
quality and costs hours of matching, and the bound keeps fps × duration from asking for 72,000."""


class SplatVideoParams(SplatParams):
    """Frame selection, limits and training parameters of a video-to-splat job. Every field is optional."""

    fps: float = Field(default=2.0, ge=0.1, le=10)
    """Frames chosen per second of video: the sharpest of each 1/fps-second slice (the legacy video
    worker's default was 2)."""

    frame_count: int | None = Field(default=None, ge=3, le=MAX_FRAMES)
    """Instead of fps: choose this many frames spread evenly over the whole video."""

    max_duration_s: float = Field(default=600, gt=0, le=7200)
    """Refuse videos longer than this many seconds (checked from the file's header before decoding)."""

    max_video_mb: int = Field(default=2048, ge=1, le=65536)
    """Refuse video files larger than this many MiB (the download stops at the limit). The daemon's
    DOWNLOAD_MAX_BYTES caps it further."""

    cameras: Literal["single"] = "single"
    """Video frames share one camera (one set of intrinsics): the only grouping a video job takes."""

    @model_validator(mode="after")
    def _one_rate(self) -> SplatVideoParams:
        # fps has a default, so only an explicit fps next to frame_count is a contradiction.
        if self.frame_count is not None and "fps" in self.model_fields_set:
            raise PydanticCustomError("conflicting_fields", "give either fps or frame_count, not both", {})
        frames = self.fps * self.max_duration_s
        if self.frame_count is None and frames > MAX_FRAMES:
            message = (
                f"fps {self.fps:g} × max_duration_s {self.max_duration_s:g} could choose {frames:,.0f} "
                f"frames, over the {MAX_FRAMES:,} a video job takes: lower fps or max_duration_s, or "
                "give frame_count"
            )
            raise PydanticCustomError("invalid_params", message, {})
        return self
