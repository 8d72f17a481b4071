"""Evaluation metrics: top-k accuracy; PSNR / SSIM on the Y channel (BT.601) with border crop, float64.

PSNR / SSIM are BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with ``test_y_channel=True``: both
images quantised to 8 bits (as saved PNGs), MATLAB's rgb2ycbcr Y in [16, 235], ``border`` pixels
cropped on each side; SSIM with an 11x11 Gaussian window (sigma 1.5) and 'valid' filtering (equal to
scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)`` on the same Y arrays).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> dict[str, int]:
    """Number of samples whose label is in the top-k predictions, for each k (k capped at #classes)."""
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        pred = logits.topk(kk, dim=1).indices
        out[f"top{k}"] = int((pred == target[:, None]).any(dim=1).sum())
    return out


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma in [16, 235] (the MATLAB rgb2ycbcr Y)."""
    w = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64, device=img.device).view(1, 3, 1, 1)
    return (img.double() * w).sum(1, keepdim=True) + 16.0


def _prep(sr: torch.Tensor, hr: torch.Tensor, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")
    # quantise to 8 bits like a saved image, then take Y
    sr = (sr.double().clamp(0, 1) * 255).round() / 255
    hr = (hr.double().clamp(0, 1) * 255).round() / 255
    y1, y2 = rgb_to_y(sr), rgb_to_y(hr)
    if border > 0:
        y1, y2 = y1[..., border:-border, border:-border], y2[..., border:-border, border:-border]
    return y1, y2


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, border: int) -> torch.Tensor:
    """Per-image PSNR (dB) on Y, peak 255, ``border`` pixels cropped on each side."""
    y1, y2 = _prep(sr, hr, border)
    mse = (y1 - y2).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


def _gauss(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, border: int) -> torch.Tensor:
    """Per-image SSIM on Y (Wang et al. 2004: 11x11 Gaussian, sigma 1.5, K=(0.01, 0.03), L=255, valid)."""
    y1, y2 = _prep(sr, hr, border)
    if min(y1.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 after the {border}-pixel border crop, "
                         f"got {tuple(y1.shape[-2:])}")
    w = _gauss(device=y1.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = F.conv2d(y1, w), F.conv2d(y2, w)
    s11 = F.conv2d(y1 * y1, w) - mu1 ** 2
    s22 = F.conv2d(y2 * y2, w) - mu2 ** 2
    s12 = F.conv2d(y1 * y2, w) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
    return m.mean(dim=(1, 2, 3))
