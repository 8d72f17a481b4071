"""Trained models applied to images: tiled super-resolution and the class names of a config's data.

``super_resolve`` runs an SR model on overlapping LR tiles (``tile`` pixels, ``overlap`` shared
between neighbours) and blends them, so the memory it needs is set by the tile, not the image. In
each overlap the outer quarter of either tile is discarded and the middle half cross-fades
linearly, so a convolutional model (SRResNet) gives the untiled output exactly once a quarter of
the overlap covers its receptive field; DVMSR's scans see the whole tile, so there tiling changes
the output slightly (see ``DEFAULT_OVERLAP``). The commands are ``vimd sr`` and ``vimd predict``
(vimd_models/commands/images.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_TILE = 256
# Measured with DVMSR micro trained by the demo (demo_sr, val PSNR 24.53 dB) on a 512x384 LR image
# of the synthetic data, 256-pixel tiles, PSNR of the tiled output against the untiled one:
# overlap 0: 44.2 dB (seams, max error 0.31), 8: 66.7 dB, 16: 67.9 dB, 32: 68.1 dB, 64: 68.3 dB
# (max error 0.025 from 8 on: what remains is the scans' context beyond the tile). 32 is where the
# gain has levelled off and its discarded quarter (8 pixels) covers the convolutions around full
# DVMSR's scans (7 pixels); on large images it costs (256 / 224)^2 = 1.3x the untiled compute.
DEFAULT_OVERLAP = 32


# ----------------------------------------------------------------------------- tiled SR

def _starts(n: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis of length n: every ``tile - overlap``, the last flush with the end."""
    if n <= tile:
        return [0]
    return list(range(0, n - tile, tile - overlap)) + [n - tile]


def _ramp(length: int, lo_shared: bool, hi_shared: bool, overlap: int, scale: int) -> torch.Tensor:
    """Blend weights along one axis of a tile's output: on a side shared with a neighbour, 0 over
    the outer quarter of the overlap, a linear rise over the middle half, 1 inside."""
    import torch
    margin, ramp = (overlap // 4) * scale, (overlap - 2 * (overlap // 4)) * scale
    d = torch.arange(length, dtype=torch.float32)
    rise = ((d - margin + 0.5) / ramp).clamp(0, 1) if ramp > 0 else torch.ones(length)
    w = torch.ones(length)
    if lo_shared:
        w = w * rise
    if hi_shared:
        w = w * rise.flip(0)
    return w


def super_resolve(model: nn.Module, lr: torch.Tensor, tile: int | None = DEFAULT_TILE,
                  overlap: int = DEFAULT_OVERLAP) -> torch.Tensor:
    """lr (1, C, H, W) in [0, 1] on the model's device -> SR (1, C, H*s, W*s) on the CPU, clamped to
    [0, 1]; tiled when the image is larger than ``tile`` (None or 0: one pass)."""
    import torch
    s = model.upscale
    _, c, h, w = lr.shape
    if not tile or (h <= tile and w <= tile):
        return model(lr).float().clamp(0, 1).cpu()
    if not 0 <= overlap < tile:
        raise UserError(f"--overlap must be >= 0 and smaller than --tile ({tile}), got {overlap}")
    out = torch.zeros(1, c, h * s, w * s)
    weight = torch.zeros(1, 1, h * s, w * s)
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    for y in ys:
        for x in xs:
            th, tw = min(tile, h), min(tile, w)
            sr = model(lr[:, :, y:y + th, x:x + tw]).float().cpu()
            wy = _ramp(th * s, y > 0, y + th < h, overlap, s)
            wx = _ramp(tw * s, x > 0, x + tw < w, overlap, s)
            wt = wy[:, None] * wx[None, :]
            out[:, :, y * s:(y + th) * s, x * s:(x + tw) * s] += sr * wt
            weight[:, :, y * s:(y + th) * s, x * s:(x + tw) * s] += wt
    return (out / weight).clamp(0, 1)


def class_names(cfg: dict, n: int) -> list[str] | None:
    """The config's dataset class names when its folder is readable and they number ``n``."""
    from .data.folders import READERS
    d = cfg["data"]
    if d["dataset"] not in READERS or not d["root"]:
        return None
    try:
        _, classes = READERS[d["dataset"]](d["root"], "val")
    except (UserError, OSError, ValueError):
        return None
    return list(classes) if len(classes) == n else None
