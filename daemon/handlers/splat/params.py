"""Parameters of the "splat" job kind (photos → 3D Gaussian splat).

Import-light on purpose (pydantic only): the spec is validated in the daemon process, which must never
import torch or gsplat (see DESIGN.md §2). The handler that trains on these lives elsewhere.

Defaults are gsplat's `simple_trainer` values, which are also the values the legacy RunPod worker (seed
001) documented, so a legacy client that sends them explicitly gets exactly the defaults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError

from ..base import STRICT_PARAMS
from .sfm_cameras import CameraGrouping

Preset = Literal["low", "medium", "high", "best"]

PRESET_ITERATIONS: dict[str, int] = {"low": 3_000, "medium": 7_000, "high": 15_000, "best": 30_000}
"""Training steps per named preset: the quality ladder the legacy worker (seed 000) sold to customers."""


class SplatParams(BaseModel):
    """Training parameters of a photo-to-splat job. Every field is optional."""

    model_config = STRICT_PARAMS

    preset: Preset = "medium"
    """Named quality level: low 3k, medium 7k, high 15k, best 30k training steps."""

    iterations: int | None = Field(default=None, ge=100, le=100_000)
    """Training steps; overrides the preset when set."""

    # Learning rates are positive Adam step sizes; anything above 1 diverges at once, hence (0, 1].
    position_lr_init: float = Field(default=1.6e-4, gt=0, le=1)
    """Learning rate of the Gaussian means at step 0 (decays exponentially to position_lr_final)."""

    position_lr_final: float = Field(default=1.6e-6, gt=0, le=1)
    """Learning rate of the Gaussian means at the last step."""

    feature_lr: float = Field(default=2.5e-3, gt=0, le=1)
    """Learning rate of the colour (SH band 0) coefficients; higher bands use a twentieth of it."""

    opacity_lr: float = Field(default=5e-2, gt=0, le=1)
    """Learning rate of the opacities."""

    scaling_lr: float = Field(default=5e-3, gt=0, le=1)
    """Learning rate of the (log) scales."""

    rotation_lr: float = Field(default=1e-3, gt=0, le=1)
    """Learning rate of the rotation quaternions."""

    sh_degree: int = Field(default=3, ge=0, le=3)
    """Highest spherical-harmonics degree (raised by one every 1,000 steps up to this)."""

    densify_grad_threshold: float = Field(default=2e-4, gt=0, lt=1)
    """Mean screen-space gradient above which a Gaussian is split or cloned."""

    max_image_size: int = Field(default=1600, ge=256, le=8192)
    """Longest image side in pixels after downscaling; bounds GPU memory per view."""

    min_images: int = Field(default=5, ge=3, le=1000)
    """Refuse the job when fewer usable images than this remain (SfM needs several viewpoints)."""

    min_registered_ratio: float = Field(default=0.5, ge=0, le=1)
    """Fail when structure from motion places fewer than this share of the usable images."""

    cameras: CameraGrouping = "auto"
    """Which photos share one set of camera intrinsics in structure from motion: "auto" groups them by
    device (EXIF make, model and focal length) and image size, so photos of one phone share a camera even
    without EXIF; "single" forces one camera for all; "per_image" solves each photo's own (photos from
    many devices, or cropped)."""

    max_gaussians: int = Field(default=2_000_000, ge=1_000, le=10_000_000)
    """Cap on the model's size: densification stops adding Gaussians beyond it (bounds GPU memory)."""

    holdout_every: int = Field(default=8, ge=0, le=100)
    """Hold out every Nth image (in input order) for the PSNR/SSIM evaluation; 0 trains on all.
    Needs at least 2N usable images, else every image is trained on and evaluated."""

    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Random seed of training; on CPU the same seed gives the same model bit for bit."""

    bundle: bool = False
    """Also store bundle.zip: the PLY, the cameras (COLMAP text and JSON), the preview and the manifest
    in one file, as the replaced video worker returned."""

    @model_validator(mode="after")
    def _lr_decays(self) -> SplatParams:
        # The schedule interpolates from init to final; a rising position lr is always a client mistake.
        if self.position_lr_final > self.position_lr_init:
            raise PydanticCustomError(
                "invalid_params",
                "position_lr_final ({final}) must not exceed position_lr_init ({init})",
                {"final": self.position_lr_final, "init": self.position_lr_init},
            )
        return self

    @property
    def steps(self) -> int:
        """Training steps to run: `iterations` if given, else the preset's."""
        return self.iterations if self.iterations is not None else PRESET_ITERATIONS[self.preset]
