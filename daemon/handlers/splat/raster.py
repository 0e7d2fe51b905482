"""One rasterizer call for the trainer: gsplat's CUDA path when CUDA is there, our torch path on CPU.

`rasterize` takes `gsplat.rasterization`'s arguments and returns what it returns, in non-packed mode
(images [C, H, W, D], alphas [C, H, W, 1], and a meta dict whose `means2d`, `radii`, `width`, `height`,
`n_cameras` and `gaussian_ids` are what `DefaultStrategy` reads), so a trainer written against gsplat
works unchanged. gsplat renders only on CUDA (even its `_torch_impl` rasterizer calls a CUDA op), so the
CPU path is ours: gsplat's pure-torch projection pieces and SH evaluation, gsplat's CUDA culling rules
re-done in torch (`_project`), then the tile compositor of `raster_cpu`.

Only pinhole cameras and unbatched inputs (means [N, 3], viewmats [C, 4, 4]) are supported on CPU; the
simple_trainer recipe uses nothing else. Differences from gsplat's CUDA rasterizer are listed in
`raster_cpu` (compositing) and `_project` (projection).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from gsplat.cuda._torch_impl import (
    _persp_proj,
    _quat_scale_to_covar_preci,
    _spherical_harmonics,
    _world_to_cam,
)
from torch import Tensor

from .raster_cpu import ALPHA_MIN, CPU_TILE_SIZE, Splats2D, TileBins, bin_tiles, composite_tiles

Backend = Literal["auto", "gsplat", "cpu"]
RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
Compositor = Callable[[Splats2D, TileBins, int, int], tuple[Tensor, Tensor]]

EXTENT_SIGMAS = 3.33
"""Bounding-box half size in standard deviations, at most (gsplat's projection kernel)."""


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, need not be normalised
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [(C,) N, D] or SH coefficients [(C,) N, K, 3] with sh_degree
    viewmats: Tensor,  # [C, 4, 4] world → camera
    Ks: Tensor,  # [C, 3, 3]  # noqa: N803 (gsplat's name)
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: RenderMode = "RGB",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    tile_size: int = 16,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render C views of N Gaussians. "auto" is gsplat's CUDA path when CUDA is available and the
    tensors live on it, else the CPU path; "gsplat" and "cpu" force one.

    `tile_size` tunes gsplat's CUDA kernel only: the CPU path uses its own `CPU_TILE_SIZE` (the image
    does not depend on the tile size; smaller tiles waste less work on CPU), and its meta describes
    those tiles."""
    args = (means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    opts: dict[str, Any] = dict(
        sh_degree=sh_degree,
        backgrounds=backgrounds,
        render_mode=render_mode,
        near_plane=near_plane,
        far_plane=far_plane,
        radius_clip=radius_clip,
        eps2d=eps2d,
    )
    if backend == "gsplat" or (backend == "auto" and torch.cuda.is_available() and means.is_cuda):
        return _rasterize_gsplat(*args, tile_size=tile_size, **opts)
    if backend not in ("auto", "cpu"):
        raise ValueError(f"unknown backend {backend!r}: expected 'auto', 'gsplat' or 'cpu'")
    return rasterize_cpu(*args, **opts)


def _rasterize_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,  # noqa: N803
    width: int,
    height: int,
    **opts: Any,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """gsplat's fused CUDA kernels, non-packed so meta has the [C, N, ...] layout the CPU path has."""
    if not means.is_cuda:
        raise ValueError("backend='gsplat' renders only CUDA tensors (gsplat has no CPU rasterizer)")
    from gsplat import rasterization

    images, alphas, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, packed=False, **opts
    )
    if meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()  # as on CPU: the densification signal is there after backward
    return images, alphas, meta


def rasterize_cpu(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,  # noqa: N803
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    render_mode: RenderMode = "RGB",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    tile_size: int = CPU_TILE_SIZE,
    compositor: Compositor = composite_tiles,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The torch path, any device. `compositor` swaps in the dense reference (tests, benchmark)."""
    if means.dim() != 2 or viewmats.dim() != 3:
        raise ValueError("the CPU rasterizer takes unbatched inputs: means [N, 3], viewmats [C, 4, 4]")
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"unknown render_mode {render_mode!r}")
    n_cameras, n = len(viewmats), len(means)
    radii, means2d, depths, conics = _project(
        means,
        quats,
        scales,
        opacities,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        radius_clip=radius_clip,
    )
    if means2d.requires_grad:
        means2d.retain_grad()  # its grad is DefaultStrategy's densification signal
    rgb = _view_colors(means, colors, viewmats, sh_degree)
    channels, backgrounds = _channels(rgb, depths, backgrounds, render_mode)
    splats = Splats2D(means2d, conics, channels, opacities.expand(n_cameras, n), depths, radii)
    bins = bin_tiles(splats, width, height, tile_size)
    images, alphas = compositor(splats, bins, width, height)
    if backgrounds is not None:
        images = images + (1.0 - alphas) * backgrounds[:, None, None, :]
    if render_mode in ("ED", "RGB+ED"):  # accumulated depth → expected depth
        images = torch.cat([images[..., :-1], images[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)
    return images, alphas, _meta(splats, bins, width, height)


def _project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,  # noqa: N803
    width: int,
    height: int,
    *,
    eps2d: float,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """radii [C, N, 2] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3].

    gsplat's torch `_world_to_cam` / `_persp_proj`, with the culling of its CUDA kernel
    (`ProjectionEWA3DGSFused.cu`), which its torch `_fully_fused_projection` lacks: opacity-aware box
    (extent min(3.33, sqrt(2 ln(opacity · 255))) σ, opacity < 1/255 culled), `radius_clip`, det <= 0
    culled, depth outside [near, far] culled. Culled Gaussians get zeros (CUDA leaves them
    uninitialised); the camera-space point is swapped for a safe one before the division by depth, so a
    Gaussian at z = 0 cannot put inf/NaN into any gradient. `_persp_proj` honours K's skew, CUDA ignores it.
    """
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    means_c, covars_c = _world_to_cam(means, covars, viewmats)
    depths = means_c[..., 2]
    in_depth = (depths >= near_plane) & (depths <= far_plane)
    safe = torch.tensor([0.0, 0.0, 1.0], dtype=means_c.dtype, device=means_c.device)
    means2d, cov2d = _persp_proj(torch.where(in_depth[..., None], means_c, safe), covars_c, Ks, width, height)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    inv = torch.stack([cov2d[..., 1, 1], -0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 0, 0]], -1)
    conics = inv / det.clamp_min(1e-10)[..., None]
    with torch.no_grad():
        opacity = opacities.expand_as(depths)
        extent = torch.sqrt(2.0 * torch.log(opacity.clamp_min(ALPHA_MIN) / ALPHA_MIN))
        extent = extent.clamp_max(EXTENT_SIGMAS)
        diag = torch.stack([cov2d[..., 0, 0], cov2d[..., 1, 1]], -1).clamp_min(0.0)
        radius = torch.ceil(extent[..., None] * torch.sqrt(diag))
        lo, hi = means2d - radius, means2d + radius
        keep = in_depth & (det > 0) & (opacity >= ALPHA_MIN) & (radius > radius_clip).any(-1)
        keep &= (hi[..., 0] > 0) & (lo[..., 0] < width) & (hi[..., 1] > 0) & (lo[..., 1] < height)
        radii = torch.where(keep[..., None], radius, 0.0).int()
    zero = torch.zeros((), dtype=means2d.dtype, device=means2d.device)
    means2d = torch.where(keep[..., None], means2d, zero)
    conics = torch.where(keep[..., None], conics, zero)
    return radii, means2d, torch.where(keep, depths, zero), conics


def _view_colors(means: Tensor, colors: Tensor, viewmats: Tensor, sh_degree: int | None) -> Tensor:
    """Per-view colours [C, N, D]: given ones broadcast, or SH evaluated towards each camera, + 0.5 and
    clamped at 0 (gsplat matching Inria's renderer)."""
    n_cameras, n = len(viewmats), len(means)
    if sh_degree is None:
        return colors.expand(n_cameras, n, colors.shape[-1])
    campos = torch.inverse(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means[None] - campos[:, None]  # [C, N, 3]
    shs = colors.expand(n_cameras, n, *colors.shape[-2:])
    # gsplat masks culled Gaussians to colour 0 here; they are never drawn, so we skip the mask.
    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)


def _channels(
    rgb: Tensor, depths: Tensor, backgrounds: Tensor | None, render_mode: RenderMode
) -> tuple[Tensor, Tensor | None]:
    """The channels to composite for a render mode, and the matching backgrounds (depth gets 0)."""
    if render_mode == "RGB":
        return rgb, backgrounds
    depth = depths[..., None]
    depth_bg = None if backgrounds is None else torch.zeros_like(backgrounds[..., :1])
    if render_mode in ("D", "ED"):
        return depth, depth_bg
    if backgrounds is None or depth_bg is None:
        return torch.cat([rgb, depth], dim=-1), None
    return torch.cat([rgb, depth], dim=-1), torch.cat([backgrounds, depth_bg], dim=-1)


def _meta(g: Splats2D, bins: TileBins, width: int, height: int) -> dict[str, Any]:
    """gsplat's non-packed meta: same keys, shapes and dtypes for everything we compute."""
    n_cameras = g.depths.shape[0]
    return {
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": g.radii,
        "means2d": g.means2d,
        "depths": g.depths,
        "conics": g.conics,
        "opacities": g.opacities,
        "tile_width": bins.tiles_x,
        "tile_height": bins.tiles_y,
        "tiles_per_gauss": bins.tiles_per_gauss,
        "isect_ids": bins.isect_ids,
        "flatten_ids": bins.flatten_ids.int(),
        "isect_offsets": bins.offsets.int().reshape(n_cameras, bins.tiles_y, bins.tiles_x),
        "width": width,
        "height": height,
        "tile_size": bins.tile_size,
        "n_batches": 1,
        "n_cameras": n_cameras,
    }
