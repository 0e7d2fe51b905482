"""CPU tile compositor: gsplat's rasterize-to-pixels in vectorised torch, with an analytic backward.

The image is cut into square tiles (`CPU_TILE_SIZE`, 8 px). Each projected Gaussian is binned into every
tile its bounding box touches, and the whole list is sorted once, the way gsplat's `isect_tiles` does
(image, tile, depth, then Gaussian index). Compositing then walks all tiles' lists at the same time,
front to back, `CHUNK` Gaussians per step: a step is a [tiles, pixels, CHUNK] block of plain tensor
ops (tiles split into groups of at most `BLOCK` entries), so the Python loop runs over depth chunks,
never over single tiles or pixels. A tile leaves the loop when its list ends or all its pixels are
saturated (gsplat's CUDA kernel stops a tile at the same point).

Rules taken from gsplat 1.5.3's CUDA kernels (`RasterizeToPixels3DGSFwd.cu` / `...Bwd.cu`):
- pixel centres at (x + 0.5, y + 0.5); sigma = 0.5 (a dx² + c dy²) + b dx dy for the conic (a, b, c);
- alpha = min(0.999, opacity · exp(-sigma)); a Gaussian is skipped where sigma < 0 or alpha < 1/255;
- a Gaussian that would bring the transmittance T to ≤ 1e-4 is not drawn and ends the pixel;
- the alpha image is 1 - T; no gradient flows through the 0.999 clamp (CUDA: `opac * vis <= 0.999`).

The backward pass is a custom autograd Function: it recomputes each chunk's alphas from the per-chunk
state saved by the forward pass (T, saturation, colour so far) instead of keeping autograd's
intermediates, which is where most of the speed and memory over an autograd version comes from. Its
gradients are tested against the dense autograd reference (`raster_dense.py`) and by `gradcheck`.

Known differences from the CUDA kernels, all at float-rounding level for the image and gradients:
- T is the chunk's starting T times a cumulative product, not a running product, so a pixel whose T
  lands within rounding of 1e-4 may stop one Gaussian earlier or later;
- the colour behind a Gaussian (backward) is the final colour minus the colour up to it, where CUDA
  accumulates it back to front; CUDA's `__expf` is an approximation, torch's `exp` is not;
- exp(-sigma) is evaluated at min(sigma, SIGMA_MAX) (changes nothing drawn);
- tiles are 8 px, not gsplat's 16 (the image does not depend on the tile size);
- no absgrad, tile masks, packed mode, or backgrounds inside the kernel (the caller adds them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

ALPHA_MIN = 1.0 / 255.0
"""A Gaussian whose alpha at a pixel is below this is skipped there (gsplat's ALPHA_THRESHOLD)."""

ALPHA_MAX = 0.999
"""Alpha is clamped to this, so 1 - alpha never reaches 0 (the value gsplat 1.5.3's kernel uses)."""

T_MIN = 1e-4
"""A pixel stops once the next Gaussian would bring its transmittance to this or below."""

SIGMA_MAX = 40.0
"""exp(-sigma) is taken of min(sigma, 40): beyond it alpha < 1e-17 · opacity, far below ALPHA_MIN, so
nothing drawn changes, while exp of the huge sigmas of far pixels underflows to denormal floats, which
made it ~10× slower on x86."""

CPU_TILE_SIZE = 8
"""Tile side in pixels on CPU. A tile evaluates every Gaussian of its list at every one of its pixels,
so smaller tiles waste less on small Gaussians; at 4 px the extra (tile, Gaussian) pairs cost about as
much as they save. 8 px was ~1.7× faster than gsplat's 16 px at 128×128 / 10k and 256×192 / 50k."""

CHUNK = 32
"""Gaussians per tile per compositing step. Larger wastes work on tiles that end or saturate inside a
chunk; smaller pays more per-step overhead."""

BLOCK = 1 << 18
"""Most (tile, pixel, Gaussian) entries in one step: active tiles are split into groups below this, so
a step's dozen temporaries stay cache-sized (1 MB each in float32) at any image size."""


@dataclass(frozen=True)
class Splats2D:
    """Projected Gaussians per image, gsplat's non-packed layout: I images × N Gaussians."""

    means2d: Tensor  # [I, N, 2] pixel coordinates
    conics: Tensor  # [I, N, 3] inverse 2D covariance (a, b, c) = ([0,0], [0,1], [1,1])
    colors: Tensor  # [I, N, D] any number of channels
    opacities: Tensor  # [I, N]
    depths: Tensor  # [I, N] camera-space z, the sort key
    radii: Tensor  # [I, N, 2] int32 bounding-box half sizes in pixels; 0 = culled


@dataclass(frozen=True)
class TileBins:
    """Which Gaussians each tile draws, front to back (gsplat's isect_tiles + isect_offset_encode)."""

    flatten_ids: Tensor  # [n_isects] int64 index into the I*N Gaussians, grouped by tile, near first
    isect_ids: Tensor  # [n_isects] int64 sort key: image << (32 + tile bits) | tile << 32 | depth bits
    offsets: Tensor  # [I * tiles] int64 start of each tile's run in flatten_ids
    counts: Tensor  # [I * tiles] int64 length of each tile's run
    tiles_per_gauss: Tensor  # [I, N] int32
    tile_size: int
    tiles_x: int
    tiles_y: int


@torch.no_grad()
def bin_tiles(g: Splats2D, width: int, height: int, tile_size: int) -> TileBins:
    """Bin every (image, Gaussian) into the tiles its box touches and sort by (image, tile, depth)."""
    n_images, n = g.depths.shape
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    tile_n_bits = (tiles_x * tiles_y).bit_length()
    if (n_images.bit_length() + tile_n_bits + 32) > 63:
        raise ValueError("too many images × tiles for a 64-bit intersection key")
    mean = g.means2d.reshape(-1, 2) / tile_size
    radius = g.radii.reshape(-1, 2).to(mean.dtype) / tile_size
    limit = torch.tensor([tiles_x, tiles_y], device=mean.device)
    lo = torch.minimum(torch.floor(mean - radius).long().clamp_min(0), limit)
    hi = torch.minimum(torch.ceil(mean + radius).long().clamp_min(0), limit)
    span = hi - lo
    per_gauss = span[:, 0] * span[:, 1] * (g.radii.reshape(-1, 2) > 0).all(dim=-1)

    # One row per (Gaussian, tile) pair: walk each Gaussian's box row-major, like the CUDA kernel.
    gid = torch.repeat_interleave(torch.arange(len(per_gauss), device=mean.device), per_gauss)
    first = torch.cumsum(per_gauss, 0) - per_gauss
    local = torch.arange(len(gid), device=mean.device) - first[gid]
    tx = lo[gid, 0] + local % span[gid, 0]
    ty = lo[gid, 1] + local // span[gid, 0]
    image, tile = gid // n, ty * tiles_x + tx
    # gsplat's key: image | tile | depth. Depths are > near_plane > 0, so their float32 bit patterns
    # sort like the values. The sort is stable: equal depths keep Gaussian order (as CUDA's radix sort).
    depth_bits = g.depths.reshape(-1).float().view(torch.int32).long() & 0xFFFFFFFF
    isect_ids = (((image << tile_n_bits) | tile) << 32) | depth_bits[gid]
    isect_ids, order = torch.sort(isect_ids, stable=True)
    counts = torch.bincount(image * (tiles_x * tiles_y) + tile, minlength=n_images * tiles_x * tiles_y)
    return TileBins(
        flatten_ids=gid[order],
        isect_ids=isect_ids,
        offsets=torch.cumsum(counts, 0) - counts,
        counts=counts,
        tiles_per_gauss=per_gauss.reshape(n_images, n).int(),
        tile_size=tile_size,
        tiles_x=tiles_x,
        tiles_y=tiles_y,
    )


def composite_tiles(g: Splats2D, bins: TileBins, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing per tile. Returns colours [I, H, W, D] (no background) and
    alphas [I, H, W, 1]; differentiable w.r.t. means2d, conics, colors and opacities."""
    n_images, n, d = g.colors.shape
    acc, transmittance = _TileComposite.apply(
        g.means2d.reshape(-1, 2),
        g.conics.reshape(-1, 3),
        g.colors.reshape(-1, d),
        g.opacities.reshape(-1),
        bins,
        width,
        height,
    )
    colors = _tiles_to_image(acc, bins, n_images, width, height)
    alphas = 1.0 - _tiles_to_image(transmittance[..., None], bins, n_images, width, height)
    return colors, alphas


def _tiles_to_image(x: Tensor, bins: TileBins, n_images: int, width: int, height: int) -> Tensor:
    """[I * tiles, ts², D] → [I, H, W, D] (drops the padding of partial edge tiles)."""
    ts, d = bins.tile_size, x.shape[-1]
    x = x.reshape(n_images, bins.tiles_y, bins.tiles_x, ts, ts, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n_images, bins.tiles_y * ts, bins.tiles_x * ts, d)[:, :height, :width]


def _pixel_centres(bins: TileBins, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[tiles, ts², 2] pixel centres (x + 0.5, y + 0.5) of one image's tiles."""
    ts = bins.tile_size
    ys, xs = torch.meshgrid(torch.arange(ts), torch.arange(ts), indexing="ij")
    ty, tx = torch.meshgrid(torch.arange(bins.tiles_y), torch.arange(bins.tiles_x), indexing="ij")
    px = tx.reshape(-1, 1) * ts + xs.reshape(1, -1) + 0.5
    py = ty.reshape(-1, 1) * ts + ys.reshape(1, -1) + 0.5
    return torch.stack([px, py], dim=-1).to(device=device, dtype=dtype)


@dataclass
class _Chunk:
    """One depth chunk of the active tiles: K Gaussians against every pixel of each tile."""

    gid: Tensor  # [A, K] flat Gaussian ids (padding slots point at Gaussian 0 and are masked)
    dx: Tensor  # [A, P, K] mean - pixel centre
    dy: Tensor
    vis: Tensor  # [A, P, K] exp(-sigma)
    raw: Tensor  # [A, P, K] opacity · vis, before the clamp
    alpha: Tensor  # [A, P, K] clamped, 0 where skipped
    keep: Tensor  # [A, P, K] drawn unless the pixel saturates first


def _load_chunk(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    bins: TileBins,
    pix: Tensor,
    active: Tensor,
    start: int,
) -> _Chunk:
    slot = start + torch.arange(CHUNK, device=active.device)
    valid = slot < bins.counts[active, None]  # [A, K]
    idx = (bins.offsets[active, None] + slot).clamp_max(max(len(bins.flatten_ids) - 1, 0))
    gid = torch.where(valid, bins.flatten_ids[idx], 0)
    xy = pix[active % (bins.tiles_x * bins.tiles_y)]  # [A, P, 2]
    dx = means2d[gid, 0][:, None, :] - xy[..., 0, None]
    dy = means2d[gid, 1][:, None, :] - xy[..., 1, None]
    a, b, c = (conics[gid, i][:, None, :] for i in range(3))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    vis = torch.exp(-sigma.clamp_max(SIGMA_MAX))
    raw = opacities[gid][:, None, :] * vis
    alpha = raw.clamp_max(ALPHA_MAX)
    keep = valid[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_MIN)
    return _Chunk(gid, dx, dy, vis, raw, torch.where(keep, alpha, 0.0), keep)


def _march(alpha: Tensor, t0: Tensor, done0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Composite one chunk given each pixel's transmittance `t0` and saturation flag `done0` [A, P].

    Returns the per-Gaussian weights and transmittance in front of each Gaussian [A, P, K], which
    Gaussians are drawn, and the pixels' transmittance and saturation after the chunk."""
    t_next = t0[..., None] * torch.cumprod(1.0 - alpha, dim=-1)  # T after each Gaussian, if drawn
    # T only falls along the chunk, so "drawn" is a prefix: everything before the Gaussian that
    # would take T to <= T_MIN (that one is excluded, as in gsplat's kernel).
    drawn = (t_next > T_MIN) & ~done0[..., None]
    t_front = torch.cat([t0[..., None], t_next[..., :-1]], dim=-1)
    weights = torch.where(drawn, alpha * t_front, 0.0)
    n_drawn = drawn.sum(dim=-1, keepdim=True)
    last = t_next.gather(-1, (n_drawn - 1).clamp_min(0))[..., 0]
    t1 = torch.where(n_drawn[..., 0] > 0, last, t0)
    done1 = done0 | (t_next[..., -1] <= T_MIN)
    return weights, t_front, drawn, t1, done1


@dataclass
class _Step:
    """What the backward pass needs to replay one forward chunk."""

    start: int
    active: Tensor  # [A] tile ids
    t0: Tensor  # [A, P] transmittance in front of the chunk
    done0: Tensor  # [A, P]
    acc0: Tensor  # [A, P, D] colour composited in front of the chunk


class _TileComposite(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        means2d: Tensor,
        conics: Tensor,
        colors: Tensor,
        opacities: Tensor,
        bins: TileBins,
        width: int,
        height: int,
    ) -> tuple[Tensor, Tensor]:
        n_images = len(bins.counts) // (bins.tiles_x * bins.tiles_y)
        pix = _pixel_centres(bins, means2d.dtype, means2d.device)
        inside = (pix[..., 0] < width) & (pix[..., 1] < height)
        n_tiles, p = len(bins.counts), pix.shape[1]
        t = torch.ones(n_tiles, p, dtype=means2d.dtype, device=means2d.device)
        done = (~inside).repeat(n_images, 1)  # pixels of partial edge tiles outside the image
        acc = colors.new_zeros(n_tiles, p, colors.shape[-1])
        steps: list[_Step] = []
        longest = int(bins.counts.max()) if len(bins.counts) else 0
        group_size = max(1, BLOCK // (p * CHUNK))
        for start in range(0, longest, CHUNK):
            active = torch.nonzero((bins.counts > start) & ~done.all(dim=-1))[:, 0]
            if len(active) == 0:
                break
            for group in active.split(group_size):
                step = _Step(start, group, t[group], done[group], acc[group])
                ch = _load_chunk(means2d, conics, opacities, bins, pix, group, start)
                weights, _, _, t1, done1 = _march(ch.alpha, step.t0, step.done0)
                t[group], done[group] = t1, done1
                acc[group] = step.acc0 + torch.einsum("apk,akd->apd", weights, colors[ch.gid])
                steps.append(step)
        ctx.save_for_backward(means2d, conics, colors, opacities, acc, t)
        ctx.bins, ctx.pix, ctx.steps = bins, pix, steps  # type: ignore[attr-defined]
        return acc, t

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, v_acc: Tensor, v_t: Tensor) -> tuple[Tensor | None, ...]:
        means2d, conics, colors, opacities, acc, t_final = ctx.saved_tensors  # type: ignore[attr-defined]
        bins, pix, steps = ctx.bins, ctx.pix, ctx.steps  # type: ignore[attr-defined]
        grads = [torch.zeros_like(x) for x in (means2d, conics, colors, opacities)]
        for step in steps:
            _backward_chunk(
                step, means2d, conics, colors, opacities, bins, pix, acc, t_final, v_acc, v_t, grads
            )
        return (*grads, None, None, None)


def _backward_chunk(
    step: _Step,
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    bins: TileBins,
    pix: Tensor,
    acc: Tensor,
    t_final: Tensor,
    v_acc: Tensor,
    v_t: Tensor,
    grads: list[Tensor],
) -> None:
    """Add one chunk's gradients to `grads` (means2d, conics, colors, opacities), in place.

    With C = Σ_k c_k α_k T_k (T_k the transmittance in front of k) and T_final = Π (1 - α_k):
    dC/dα_k = c_k T_k - S_k / (1 - α_k), S_k = Σ_{j>k} c_j α_j T_j (the colour behind k), and
    dT_final/dα_k = -T_final / (1 - α_k). S_k is the final colour minus the colour up to and with k.
    """
    ch = _load_chunk(means2d, conics, opacities, bins, pix, step.active, step.start)
    weights, t_front, drawn, _, _ = _march(ch.alpha, step.t0, step.done0)
    va, vt = v_acc[step.active], v_t[step.active]  # [A, P, D], [A, P]
    col = colors[ch.gid]  # [A, K, D]
    g = torch.einsum("akd,apd->apk", col, va)  # colour of each Gaussian · dL/dC, per pixel
    behind = ((acc[step.active] - step.acc0) * va).sum(-1, keepdim=True) - torch.cumsum(weights * g, -1)
    v_alpha = t_front * g - (behind + (t_final[step.active] * vt)[..., None]) / (1.0 - ch.alpha)
    # No gradient through skipped Gaussians, undrawn ones, or the 0.999 clamp.
    live = drawn & ch.keep & (ch.raw <= ALPHA_MAX)
    v_sigma = torch.where(live, -ch.raw * v_alpha, 0.0)
    v_opacity = torch.where(live, ch.vis * v_alpha, 0.0).sum(1)  # [A, K]
    sxx, sxy, syy = ((v_sigma * u * w).sum(1) for u, w in ((ch.dx, ch.dx), (ch.dx, ch.dy), (ch.dy, ch.dy)))
    sx, sy = (v_sigma * ch.dx).sum(1), (v_sigma * ch.dy).sum(1)
    a, b, c = conics[ch.gid].unbind(-1)  # [A, K] each
    v_means = torch.stack([a * sx + b * sy, b * sx + c * sy], dim=-1)
    v_conics = torch.stack([0.5 * sxx, sxy, 0.5 * syy], dim=-1)
    v_colors = torch.einsum("apk,apd->akd", weights, va)
    gid = ch.gid.reshape(-1)
    for grad, v in zip(grads, (v_means, v_conics, v_colors, v_opacity), strict=True):
        grad.index_add_(0, gid, v.reshape(len(gid), *grad.shape[1:]))
