"""Super-resolution data: HR image folders (DIV2K-style) with LR made by bicubic downsampling or
read from an LR folder, and the standard test sets (Set5, Set14, B100, Urban100, Manga109) as HR
folders. LR is made with antialiased bicubic ``F.interpolate`` (not MATLAB imresize: PSNR on made-LR
test sets can differ from published numbers by a few 0.01 dB)."""
from __future__ import annotations

import os

import torch

from ..errors import UserError
from .folders import IMG_EXT
from .transforms import load_image, resize


def list_images(folder: str, what: str = "HR") -> list[str]:
    if not os.path.isdir(folder):
        raise UserError(f"{what} image folder not found: {folder}")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMG_EXT))
    if not files:
        raise UserError(f"no images ({', '.join(IMG_EXT)}) in {what} folder {folder}")
    return files


def mod_crop(img: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    return img[:, : h - h % scale, : w - w % scale]


def make_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = hr.shape[-2:]
    return resize(hr, (h // scale, w // scale))


def _lr_match(hr_path: str, lr_files: dict[str, str], scale: int) -> str:
    """DIV2K names LR files '0001x4.png' for HR '0001.png'; also accept identical names."""
    stem = os.path.splitext(os.path.basename(hr_path))[0]
    for key in (f"{stem}x{scale}", stem):
        if key in lr_files:
            return lr_files[key]
    raise UserError(f"no LR image for {hr_path} in the LR folder (looked for {stem}x{scale}.* and {stem}.*)")


class SRPairs:
    """``get(i)`` -> (hr (3, H, W), lr (3, H/scale, W/scale)); HR mod-cropped to the scale."""

    def __init__(self, hr_dir: str, scale: int, lr_dir: str | None = None, name: str | None = None):
        self.hr_files = list_images(hr_dir, "HR")
        self.scale, self.name = scale, name or os.path.basename(os.path.normpath(hr_dir))
        self.where = hr_dir if lr_dir is None else f"{hr_dir} (LR: {lr_dir})"
        self.lr_files = None
        if lr_dir is not None:
            lrs = list_images(lr_dir, "LR")
            by_stem = {os.path.splitext(os.path.basename(p))[0]: p for p in lrs}
            self.lr_files = [_lr_match(p, by_stem, scale) for p in self.hr_files]

    def __len__(self) -> int:
        return len(self.hr_files)

    def file_groups(self) -> list[tuple[str, str]]:
        """(path, "HR" or "LR") of every image file (data.check)."""
        return [(p, "HR") for p in self.hr_files] + [(p, "LR") for p in self.lr_files or []]

    def get(self, index: int):
        hr = mod_crop(load_image(self.hr_files[index]), self.scale)
        if self.lr_files is None:
            return hr, make_lr(hr, self.scale)
        lr = load_image(self.lr_files[index])
        if tuple(lr.shape[-2:]) != (hr.shape[-2] // self.scale, hr.shape[-1] // self.scale):
            raise UserError(f"LR image {self.lr_files[index]} is {tuple(lr.shape[-2:])}, expected "
                            f"HR {tuple(hr.shape[-2:])} / {self.scale}")
        return hr, lr


class SyntheticSR:
    """HR images from the synthetic dataset (rendered at ``size``), LR by bicubic downsampling."""

    def __init__(self, size: int, n: int, split: str, seed: int, scale: int):
        from .synthetic import SyntheticFineGrained
        self.base = SyntheticFineGrained(10, n, split, seed, render_size=size - size % scale)
        self.scale, self.name = scale, f"synthetic_{split}"

    def __len__(self) -> int:
        return len(self.base)

    def get(self, index: int):
        hr = self.base.get(index)[0]
        return hr, make_lr(hr, self.scale)
