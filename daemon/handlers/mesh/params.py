"""Parameters of the "mesh" job kind: an uploaded 3D model → an optimised GLB, its levels of detail, a
preview, a thumbnail and an analysis. Pydantic only, like every kind's params.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from ..base import STRICT_PARAMS

Compression = Literal["draco", "meshopt", "none"]
TextureFormat = Literal["webp", "keep"]

SEED_LOD_TARGETS = (1_000_000, 100_000, 10_000)
"""The replaced worker's levels of detail (seed 003's GLB optimisation): 1M, 100k and 10k vertices."""


class MeshParams(BaseModel):
    """How a model is optimised. Every field is optional."""

    model_config = STRICT_PARAMS

    compression: Compression = "draco"
    """Geometry compression of every GLB: "draco" (KHR_draco_mesh_compression, the replaced worker's
    choice), "meshopt" (EXT_meshopt_compression: faster to decode, smaller after gzip/brotli) or
    "none". three.js, <model-viewer> and Babylon read both."""

    draco_level: int = Field(default=7, ge=0, le=10)
    """Draco compression level, as gltf-pipeline's --draco.compressionLevel (the replaced worker's 7)."""

    max_texture_size: int = Field(default=2048, ge=16, le=8192)
    """Textures larger than this (long side, pixels) are downscaled to it."""

    texture_format: TextureFormat = "webp"
    """"webp" re-encodes every texture as WebP (EXT_texture_webp); "keep" keeps PNG/JPEG."""

    join_parts: bool = True
    """Merge the model's parts into as few draw calls as possible: plain-colour materials into a
    palette texture, the node tree flattened, parts sharing a material joined (what phones draw fast;
    `gltf-transform optimize` does the same). false keeps every part a node of its own, named as
    uploaded, for apps that pick parts."""

    max_texture_pixels: int = Field(default=8192 * 8192, ge=1)
    """A texture whose header declares more pixels than this is refused (texture_too_large) before
    anything decodes it."""

    lod_targets: list[float] = Field(default_factory=lambda: [float(t) for t in SEED_LOD_TARGETS])
    """Levels of detail, finest first: a number above 1 is a vertex count, at most 1 a share of the
    model's triangles. Levels at or above the model's own size are the full model. Empty: no levels
    (the preview is still made)."""

    preview_ratio: float = Field(default=0.001, gt=0, le=1)
    """preview.glb keeps this share of the triangles (the replaced worker's 0.1%), at least 200."""

    thumbnail_size: int = Field(default=512, ge=64, le=2048)
    """Width and height of thumbnail.png and thumbnail.webp (pixels)."""

    @model_validator(mode="after")
    def _targets(self) -> MeshParams:
        if len(self.lod_targets) > 6:
            raise ValueError("lod_targets: at most 6 levels")
        if any(t <= 0 for t in self.lod_targets):
            raise ValueError("lod_targets: positive vertex counts or shares")
        return self
