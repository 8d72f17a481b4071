"""Image transforms on float tensors (C, H, W) in [0, 1], driven by an explicit torch.Generator.

Resizing is bicubic with antialiasing through ``torch.nn.functional.interpolate(mode="bicubic",
antialias=True)`` (PIL-like when downsampling), clamped back to [0, 1]. No mean/std normalisation:
every model here takes [0, 1] pixels (ViMD protocol).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError


def read_rgb(path: str) -> np.ndarray:
    """Read an image file as a uint8 (H, W, 3) RGB array; a bad file is a UserError."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except Exception as e:  # PIL raises many types for truncated / unknown files
        raise UserError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def load_image(path: str) -> torch.Tensor:
    """Read an image file as a float (3, H, W) tensor in [0, 1]; a bad file is a UserError."""
    return torch.from_numpy(read_rgb(path)).permute(2, 0, 1).float().div_(255.0)


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic (antialiased) resize of (C, H, W) to ``size`` = (h, w)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    out = F.interpolate(img.unsqueeze(0), size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.squeeze(0).clamp_(0.0, 1.0)


def resize_short(img: torch.Tensor, short: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    if h <= w:
        return resize(img, (short, max(short, round(w * short / h))))
    return resize(img, (max(short, round(h * short / w)), short))


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    if h < size or w < size:
        img = resize_short(img, size)
        h, w = img.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return img[:, top:top + size, left:left + size]


def random_resized_crop_box(h: int, w: int, g: torch.Generator, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a RandomResizedCrop box (the usual 10-tries algorithm)."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=g).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        ar = math.exp(log_r[0] + u[1] * (log_r[1] - log_r[0]))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return top, left, ch, cw
    side = min(h, w)  # fallback: central square
    return (h - side) // 2, (w - side) // 2, side, side


def random_resized_crop(img: torch.Tensor, size: int, g: torch.Generator, scale=(0.08, 1.0)) -> torch.Tensor:
    top, left, ch, cw = random_resized_crop_box(img.shape[-2], img.shape[-1], g, scale)
    return resize(img[:, top:top + ch, left:left + cw], (size, size))


def random_hflip(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return img.flip(-1) if bool(torch.rand(1, generator=g) < 0.5) else img


def random_crop_pair(hr: torch.Tensor, lr: torch.Tensor, patch: int, scale: int,
                     g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned random crops: an HR patch of ``patch`` pixels and its LR patch of patch//scale."""
    lp = patch // scale
    lh, lw = lr.shape[-2:]
    if lh < lp or lw < lp:
        raise UserError(f"LR image {lh}x{lw} is smaller than the LR patch {lp}x{lp}")
    top = int(torch.randint(0, lh - lp + 1, (1,), generator=g))
    left = int(torch.randint(0, lw - lp + 1, (1,), generator=g))
    lr_p = lr[:, top:top + lp, left:left + lp]
    hr_p = hr[:, top * scale:(top + lp) * scale, left * scale:(left + lp) * scale]
    if bool(torch.rand(1, generator=g) < 0.5):
        lr_p, hr_p = lr_p.flip(-1), hr_p.flip(-1)
    if bool(torch.rand(1, generator=g) < 0.5):
        lr_p, hr_p = lr_p.flip(-2), hr_p.flip(-2)
    return hr_p, lr_p


class LowResProtocol:
    """ViMD low-resolution protocol: the HR view and the LR view of the SAME crop.

    train: RandomResizedCrop(img_size, bicubic) + horizontal flip -> HR; bicubic to lr_size -> LR.
    test: resize short side to img_size, center crop img_size -> HR; bicubic to lr_size -> LR.
    """

    def __init__(self, img_size: int, lr_size: int, train: bool, scale_min: float = 0.08, hflip: bool = True):
        self.img_size, self.lr_size, self.train = img_size, lr_size, train
        self.scale = (scale_min, 1.0)
        self.hflip = hflip

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train:
            hr = random_resized_crop(img, self.img_size, g, self.scale)
            if self.hflip:
                hr = random_hflip(hr, g)
        else:
            hr = center_crop(resize_short(img, self.img_size), self.img_size)
        return hr, resize(hr, (self.lr_size, self.lr_size))
