"""Dense reference compositor: every pixel against every Gaussian, in plain autograd torch.

Obviously correct and slow (pixels × Gaussians work). It is what the tile compositor is tested against
and what the benchmark calls "the plain alternative". Same rules as `raster_cpu` (gsplat's kernel):
alpha = min(0.999, opacity · exp(-sigma)), skipped where sigma < 0 or alpha < 1/255, front to back by
depth, and a pixel stops before the Gaussian that would bring its transmittance to ≤ 1e-4.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .raster_cpu import ALPHA_MAX, ALPHA_MIN, SIGMA_MAX, T_MIN, Splats2D, TileBins

PIXELS_PER_PASS = 1024
"""Pixels composited together. Each pass is checkpointed (recomputed in backward), so memory stays at
one pass's [pixels, Gaussians] intermediates instead of the whole image's."""


def composite_dense(g: Splats2D, bins: TileBins | None, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Colours [I, H, W, D] (no background) and alphas [I, H, W, 1]. `bins` is unused: there are no
    tiles here; it is accepted so both compositors share one signature."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1).to(g.means2d) + 0.5  # [H*W, 2]
    colors, alphas = [], []
    for i in range(g.depths.shape[0]):
        # Projection's survivors, nearest first; a stable sort on float32 depths keeps gsplat's order.
        ids = torch.nonzero((g.radii[i] > 0).all(dim=-1))[:, 0]
        ids = ids[torch.argsort(g.depths[i, ids].float(), stable=True)]
        gauss = (g.means2d[i, ids], g.conics[i, ids], g.opacities[i, ids], g.colors[i, ids])
        passes = [
            checkpoint(_composite_pixels, pixels[s : s + PIXELS_PER_PASS], *gauss, use_reentrant=False)
            for s in range(0, len(pixels), PIXELS_PER_PASS)
        ]
        colors.append(torch.cat([c for c, _ in passes]).reshape(height, width, -1))
        alphas.append(torch.cat([a for _, a in passes]).reshape(height, width, 1))
    return torch.stack(colors), torch.stack(alphas)


def _composite_pixels(
    pixels: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor
) -> tuple[Tensor, Tensor]:
    """[P, 2] pixel centres against M depth-sorted Gaussians → colours [P, D], alphas [P]."""
    dx = means2d[None, :, 0] - pixels[:, 0, None]  # [P, M]
    dy = means2d[None, :, 1] - pixels[:, 1, None]
    a, b, c = conics.unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = (opacities * torch.exp(-sigma.clamp_max(SIGMA_MAX))).clamp_max(ALPHA_MAX)  # see SIGMA_MAX
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, 0.0)
    with torch.no_grad():  # which Gaussians a pixel draws before it saturates (a prefix, T only falls)
        drawn = torch.cumprod(1.0 - alpha, dim=1) > T_MIN
    alpha = alpha * drawn
    t_after = torch.cumprod(1.0 - alpha, dim=1)
    t_front = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
    t_final = t_after[:, -1] if t_after.shape[1] else torch.ones_like(pixels[:, 0])
    return (alpha * t_front) @ colors, 1.0 - t_final
