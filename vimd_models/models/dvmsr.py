"""DVMSR (Lei et al., NTIRE 2024 efficient SR), its larger teacher, and the RSSB-2D variant.

DVMSR: LR - mean -> conv3x3 -> tokens (row-major) + LayerNorm -> RSSBs -> LayerNorm -> conv3x3 +
global skip -> conv3x3 -> PixelShuffle -> + mean. RSSB(x) = x + conv3x3(block_k(...block_1(x))).
Blocks: ``"vimm"`` (DVMSR: Mamba(LayerNorm(x)), no residual inside by default, as released) or
``"ss2d"`` (MambaIR's VSSBlock with the 4-route 2-D scan in one grouped scan call).
Names follow the release except ``norm_in`` (release: ``patch_embed.norm``) and
``layers.{i}.blocks`` (release: ``layers.{i}.residual_group.blocks``); ``DVMSR.release_renames`` maps them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..layers import DropPath, Mamba, VSSBlock
from ..registry import register_model
from .common import ModelApi

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class ViMM(nn.Module):
    """Mamba(LayerNorm(x)) on (B, L, C); ``residual=True`` gives x + drop_path(Mamba(LN(x)))."""

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, residual: bool = False,
                 drop_path: float = 0.0, backend: str | None = None):
        super().__init__()
        self.residual = residual
        self.norm = nn.LayerNorm(dim)
        self.mixer = Mamba(dim, d_state=d_state, expand=expand, backend=backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        y = self.mixer(self.norm(x))
        return x + self.drop_path(y) if self.residual else y


class RSSB(nn.Module):
    def __init__(self, dim: int, depth: int, block: str, d_state: int, expand: int, vimm_residual: bool,
                 dpr: Sequence[float], backend: str | None):
        super().__init__()
        if block == "vimm":
            blocks = [ViMM(dim, d_state, expand, vimm_residual, dpr[i], backend) for i in range(depth)]
        elif block == "ss2d":
            blocks = [VSSBlock(dim, d_state, expand, dpr[i], backend) for i in range(depth)]
        else:
            raise ValueError(f"block must be 'vimm' or 'ss2d', got {block!r}")
        self.blocks = nn.ModuleList(blocks)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        y = x
        for blk in self.blocks:
            y = blk(y, hw)
        b, L, c = y.shape
        y = self.conv(y.transpose(1, 2).reshape(b, c, *hw))
        return x + y.flatten(2).transpose(1, 2)


class DVMSR(ModelApi, nn.Module):
    """lr (B, 3, h, w) in [0, 1] -> sr (B, 3, h*upscale, w*upscale) (not clamped, as released)."""
    release_renames = ((r"^patch_embed\.norm\.", "norm_in."),
                       (r"^layers\.(\d+)\.residual_group\.blocks\.", r"layers.\1.blocks."))

    def __init__(self, upscale: int = 4, embed_dim: int = 60, depths: Sequence[int] = (2, 2, 2, 2),
                 d_state: int = 16, expand: int = 2, block: str = "vimm", vimm_residual: bool = False,
                 drop_path_rate: float = 0.0, in_chans: int = 3, img_range: float = 1.0,
                 backend: str | None = None):
        super().__init__()
        if upscale < 1 or embed_dim < 1 or not depths:
            raise ValueError(f"need upscale >= 1, embed_dim >= 1 and depths non-empty; got "
                             f"{upscale}, {embed_dim}, {depths}")
        self.upscale, self.img_range, self.backend = upscale, img_range, backend
        mean = DIV2K_MEAN if in_chans == 3 else (0.0,) * in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.norm_in = nn.LayerNorm(embed_dim)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            RSSB(embed_dim, d, block, d_state, expand, vimm_residual, dpr[s:s + d], backend)
            for s, d in zip(starts, depths))
        self.norm_f = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.upsample = nn.Sequential(nn.Conv2d(embed_dim, in_chans * upscale ** 2, 3, 1, 1),
                                      nn.PixelShuffle(upscale))
        # Mixers keep mamba_ssm's init (the release re-inits every Linear, zeroing dt biases).
        self.feature_info = [dict(num_chs=embed_dim, reduction=1, module=f"layers.{i}")
                             for i in range(len(depths))]

    def forward_intermediates(self, lr: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(sr, [RSSB output maps (B, C, h, w)])."""
        if lr.dim() != 4 or lr.shape[1] != self.mean.shape[1]:
            raise ValueError(f"lr must be (batch, {self.mean.shape[1]}, h, w), got {tuple(lr.shape)}")
        mean = self.mean.to(lr.dtype)
        x = self.conv_first((lr - mean) * self.img_range)
        b, c, h, w = x.shape
        t = self.norm_in(x.flatten(2).transpose(1, 2))
        feats = []
        for layer in self.layers:
            t = self.run_block(layer, t, (h, w))
            feats.append(t.transpose(1, 2).reshape(b, c, h, w))
        t = self.norm_f(t).transpose(1, 2).reshape(b, c, h, w)
        x = self.conv_after_body(t) + x
        return self.upsample(x) / self.img_range + mean, feats

    def forward(self, lr: Tensor) -> Tensor:
        return self.forward_intermediates(lr)[0]


def _dvmsr(defaults: dict, kwargs: dict) -> DVMSR:
    return DVMSR(**{**defaults, **kwargs})


@register_model
def dvmsr(**kwargs) -> DVMSR:
    """The NTIRE 2024 model: 60 channels, 4 RSSBs x 2 ViMMs, x4 (424,428 parameters)."""
    return _dvmsr(dict(embed_dim=60, depths=(2, 2, 2, 2)), kwargs)


@register_model
def dvmsr_teacher(**kwargs) -> DVMSR:
    """Choice (not published): the same design scaled up, 180 channels, 6 RSSBs x 6 ViMMs."""
    return _dvmsr(dict(embed_dim=180, depths=(6,) * 6), kwargs)


@register_model
def dvmsr_rssb2d(**kwargs) -> DVMSR:
    """DVMSR with MambaIR's RSSB (VSSBlock: 4-route 2-D scan, conv block, skip scales)."""
    return _dvmsr(dict(embed_dim=60, depths=(2, 2, 2, 2), block="ss2d"), kwargs)


@register_model
def dvmsr_micro(**kwargs) -> DVMSR:
    """CPU tests/demos: 16 channels, 2 RSSBs x 1 ViMM, N=8, x4."""
    return _dvmsr(dict(embed_dim=16, depths=(1, 1), d_state=8), kwargs)


@register_model
def dvmsr_rssb2d_micro(**kwargs) -> DVMSR:
    """CPU tests: the RSSB-2D variant at 16 channels, 2 RSSBs x 1 block, N=8."""
    return _dvmsr(dict(embed_dim=16, depths=(1, 1), d_state=8, block="ss2d"), kwargs)
