"""Parameters of the "splat_video" job kind (one video → frames → 3D Gaussian splat).

Pydantic only, like `params_splat`: the daemon validates specs without importing the training stack.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from daemon.handlers.params_splat import PRESET_ITERATIONS, STRICT_PARAMS, Preset


class SplatVideoParams(BaseModel):
    """Frame extraction and training parameters of a video-to-splat job. Every field is optional."""

    model_config = STRICT_PARAMS

    preset: Preset = "medium"
    """Named quality level: low 3k, medium 7k, high 15k, best 30k training steps."""

    iterations: int | None = Field(default=None, ge=100, le=100_000)
    """Training steps; overrides the preset when set."""

    fps: float = Field(default=2.0, ge=0.1, le=10)
    """Frames extracted per second of video (the legacy video worker's default was 2)."""

    @property
    def steps(self) -> int:
        """Training steps to run: `iterations` if given, else the preset's."""
        return self.iterations if self.iterations is not None else PRESET_ITERATIONS[self.preset]
