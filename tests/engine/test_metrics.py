"""PSNR / SSIM on Y against an independent computation: scikit-image's metrics on Y arrays made here
from the published formulas (MATLAB rgb2ycbcr on 8-bit images, border crop = scale)."""
import numpy as np
import pytest
import torch

from vimd_models.engine.metrics import psnr_y, ssim_y

metrics = pytest.importorskip("skimage.metrics")


def _images(seed, h=48, w=40):
    """An 8-bit 'HR' image and a degraded 'SR' one (blur + noise), as saved PNGs would hold."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    hr = np.stack([128 + 90 * np.sin(x / (3 + c) + c) * np.cos(y / 5) for c in range(3)], -1)
    hr = np.clip(hr + g.normal(0, 10, hr.shape), 0, 255).round()
    sr = (hr + np.roll(hr, 1, 0) + np.roll(hr, 1, 1)) / 3 + g.normal(0, 4, hr.shape)
    return np.clip(sr, 0, 255).round().astype(np.uint8), hr.astype(np.uint8)


def _y(img_u8):
    """MATLAB rgb2ycbcr's Y on [0, 1] RGB, in [16, 235] (BT.601)."""
    rgb = img_u8.astype(np.float64) / 255
    return 16 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def _t(img_u8):
    return torch.from_numpy(img_u8).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("seed,border", [(0, 4), (1, 2), (2, 0)])
def test_psnr_and_ssim_match_scikit_image_on_y(seed, border):
    sr, hr = _images(seed)
    ys, yh = _y(sr), _y(hr)
    if border:
        ys, yh = ys[border:-border, border:-border], yh[border:-border, border:-border]
    want_psnr = metrics.peak_signal_noise_ratio(yh, ys, data_range=255)
    want_ssim = metrics.structural_similarity(yh, ys, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False, data_range=255)
    assert 15 < want_psnr < 40 and 0.2 < want_ssim < 0.99  # a real, imperfect reconstruction
    assert float(psnr_y(_t(sr), _t(hr), border)) == pytest.approx(want_psnr, abs=1e-6)
    assert float(ssim_y(_t(sr), _t(hr), border)) == pytest.approx(want_ssim, abs=1e-6)


def test_psnr_formula_by_hand():
    """10 log10(255^2 / MSE) over the cropped Y of a known difference."""
    hr = np.full((20, 20, 3), 100, np.uint8)
    sr = hr.copy()
    sr[..., 1] += 10  # Y moves by 128.553 * 10 / 255 everywhere
    d = 128.553 * 10 / 255
    assert float(psnr_y(_t(sr), _t(hr), 4)) == pytest.approx(10 * np.log10(255 ** 2 / d ** 2), abs=1e-9)
