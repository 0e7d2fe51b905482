"""Image metrics for training and evaluation: PSNR and SSIM (Gaussian window, as in 3DGS), pure torch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention


def psnr(rendered: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of images in [0, 1]."""
    mse = torch.mean((rendered - target) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    window = torch.outer(g, g)
    return window.expand(channels, 1, size, size).contiguous()


def ssim(
    rendered: torch.Tensor, target: torch.Tensor, window_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Mean SSIM of two [H, W, C] images in [0, 1]; differentiable (the training loss uses 1 - SSIM)."""
    x = rendered.permute(2, 0, 1).unsqueeze(0)
    y = target.permute(2, 0, 1).unsqueeze(0)
    channels = x.shape[1]
    window = _gaussian_window(window_size, sigma, channels, x.device)
    pad = window_size // 2

    def blur(img: torch.Tensor) -> torch.Tensor:
        return F.conv2d(img, window, padding=pad, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    sigma_x = blur(x * x) - mu_x**2
    sigma_y = blur(y * y) - mu_y**2
    sigma_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
    )
    return ssim_map.mean()
