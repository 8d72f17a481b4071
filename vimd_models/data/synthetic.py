"""Synthetic fine-grained dataset: procedurally drawn "birds" whose classes differ in small details.

Each class k has a coarse attribute shared with other classes (body colour, group = k % n_groups)
and fine ones (f = k // n_groups: the colours of a small eye dot and of a small wing patch, and the
number of thin stripes).
Telling apart classes of the same group needs the small details, which are largely lost at low
resolution -- the situation ViMD is about. Every image is a pure function of (seed, split, index):
position, size, angle, body-colour jitter and the textured background are random per image.
"""
from __future__ import annotations

import math

import torch

BODY = torch.tensor([[0.80, 0.25, 0.20], [0.20, 0.55, 0.85], [0.25, 0.70, 0.30], [0.85, 0.70, 0.20],
                     [0.55, 0.30, 0.70], [0.30, 0.30, 0.30], [0.90, 0.50, 0.65], [0.45, 0.30, 0.15]])
EYE = torch.tensor([[1.0, 1.0, 0.2], [0.9, 0.1, 0.1], [0.1, 0.9, 0.9], [1.0, 1.0, 1.0]])
WING = torch.tensor([[1.0, 1.0, 1.0], [0.05, 0.05, 0.05], [1.0, 0.55, 0.0], [0.1, 0.2, 0.9]])
_SPLITS = {"train": 0, "val": 1, "test": 1}


class SyntheticFineGrained:
    """``num_classes`` classes, ``size`` images of ``render_size`` pixels for a split; labels balanced."""

    def __init__(self, num_classes: int = 10, size: int = 512, split: str = "train", seed: int = 0,
                 render_size: int = 80):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.size, self.split, self.seed = num_classes, size, split, seed
        self.render_size = render_size
        self.n_fine = 2 if num_classes <= 16 else 4
        self.n_groups = math.ceil(num_classes / self.n_fine)
        self.labels = [i % num_classes for i in range(size)]

    def __len__(self) -> int:
        return self.size

    def class_attributes(self, k: int) -> tuple[int, int, int]:
        """(body colour index, detail index: eye and wing-patch colours, stripe count) of class k."""
        group, fine = k % self.n_groups, k // self.n_groups
        return group % len(BODY), fine % len(EYE), 1 + (fine // len(EYE) + fine) % 3

    def get(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + _SPLITS[self.split]) * 10_000_019 + index)
        return self.render(self.labels[index], g), self.labels[index]

    def render(self, k: int, g: torch.Generator) -> torch.Tensor:
        s = self.render_size
        body_i, eye_i, stripes = self.class_attributes(k)
        r = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
        # background: smooth two-colour gradient + blotchy texture
        c0, c1 = r(3, 1, 1) * 0.6 + 0.2, r(3, 1, 1) * 0.6 + 0.2
        ang = r(1).item() * 2 * math.pi
        t = (xs * math.cos(ang) + ys * math.sin(ang) + 1) / 2
        img = c0 * t + c1 * (1 - t)
        blot = torch.nn.functional.interpolate(r(1, 1, 6, 6), size=(s, s), mode="bicubic", align_corners=False)[0]
        img = img + (blot - 0.5) * 0.25
        # body: rotated ellipse
        cx, cy = (r(2) - 0.5).mul(0.5).tolist()
        a = 0.45 + 0.15 * r(1).item()
        b = a * (0.55 + 0.1 * r(1).item())
        th = (r(1).item() - 0.5) * 0.8
        u = (xs - cx) * math.cos(th) + (ys - cy) * math.sin(th)
        v = -(xs - cx) * math.sin(th) + (ys - cy) * math.cos(th)
        body = ((u / a) ** 2 + (v / b) ** 2) <= 1
        colour = (BODY[body_i] + (r(3) - 0.5) * 0.15).clamp(0, 1).view(3, 1, 1)
        img = torch.where(body, colour, img)
        # head: circle at the front of the body
        hx, hy = cx + a * math.cos(th), cy + a * math.sin(th)
        hr = b * 0.6
        head = ((xs - hx) ** 2 + (ys - hy) ** 2) <= hr ** 2
        img = torch.where(head, colour * 0.85, img)
        # fine detail 1: eye dot colour
        ex, ey = hx + 0.35 * hr * math.cos(th) - 0.3 * hr * math.sin(th), hy + 0.35 * hr * math.sin(th) + 0.3 * hr * math.cos(th)
        eye = ((xs - ex) ** 2 + (ys - ey) ** 2) <= (0.4 * hr) ** 2
        img = torch.where(eye, EYE[eye_i].view(3, 1, 1), img)
        # fine detail 2: a small wing patch of the detail colour
        wing = (((u + 0.3 * a) / (0.2 * a)) ** 2 + ((v + 0.1 * b) / (0.28 * b)) ** 2) <= 1
        img = torch.where(wing, WING[eye_i].view(3, 1, 1), img)
        # fine detail 3: thin dark stripes across the rear of the body
        for j in range(stripes):
            pos = 0.15 * a + j * 0.2 * a
            stripe = body & ((u - pos).abs() <= 0.09 * a) & (v.abs() <= 0.8 * b)
            img = torch.where(stripe, colour * 0.25, img)
        img = img + (r(3, s, s) - 0.5) * 0.06
        return img.clamp_(0.0, 1.0)
