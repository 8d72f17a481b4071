"""SRResNet x4 (Ledig et al. 2017), the SR sub-network of SRVM-Net in the ViMD code.

Module names follow the SRResNet x4 release the ViMD code loads (``conv1``, ``trunk.{i}.rcb``,
``conv2``, ``upsampling.{i}.upsample_block``, ``conv3``), so its state dict loads by name.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..registry import register_model
from .common import ModelApi


class ResidualConvBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.rcb = nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.PReLU(),
                                 nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.rcb(x)


class UpsampleBlock(nn.Module):
    def __init__(self, ch: int, factor: int):
        super().__init__()
        self.upsample_block = nn.Sequential(nn.Conv2d(ch, ch * factor * factor, 3, 1, 1),
                                            nn.PixelShuffle(factor), nn.PReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample_block(x)


class SRResNet(ModelApi, nn.Module):
    """lr (B, 3, h, w) in [0, 1] -> sr (B, 3, h*upscale, w*upscale) clamped to [0, 1]."""
    release_renames = ()  # the x4 release ({"state_dict": sd}) uses these names

    def __init__(self, upscale: int = 4, channels: int = 64, num_blocks: int = 16, in_chans: int = 3,
                 backend: str | None = None):
        super().__init__()
        if upscale not in (2, 3, 4, 8):
            raise ValueError(f"upscale must be 2, 3, 4 or 8, got {upscale}")
        self.upscale, self.backend = upscale, backend  # no scan kernels here; kept for the interface
        self.conv1 = nn.Sequential(nn.Conv2d(in_chans, channels, 9, 1, 4), nn.PReLU())
        self.trunk = nn.Sequential(*(ResidualConvBlock(channels) for _ in range(num_blocks)))
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
        steps = [3] if upscale == 3 else [2] * int(math.log2(upscale))
        self.upsampling = nn.Sequential(*(UpsampleBlock(channels, f) for f in steps))
        self.conv3 = nn.Conv2d(channels, in_chans, 9, 1, 4)
        self.feature_info = [dict(num_chs=channels, reduction=1, module=f"trunk.{i}") for i in range(num_blocks)]

    def forward_intermediates(self, lr: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(sr, [output of each residual block])."""
        if lr.dim() != 4:
            raise ValueError(f"lr must be (batch, channels, h, w), got {tuple(lr.shape)}")
        head = self.conv1(lr)
        feats, x = [], head
        for blk in self.trunk:
            x = self.run_block(blk, x)
            feats.append(x)
        x = self.upsampling(head + self.conv2(x))
        return torch.clamp(self.conv3(x), 0.0, 1.0), feats

    def forward(self, lr: Tensor) -> Tensor:
        return self.forward_intermediates(lr)[0]


def srresnet_x4(**kwargs) -> SRResNet:
    return SRResNet(**{"upscale": 4, "channels": 64, "num_blocks": 16, **kwargs})


# the ImageNet-trained release that SRVM-Net's SR sub-network starts from (key "state_dict")
register_model(srresnet_x4, pretrained_cfg=dict(file_name="SRResNet_x4-ImageNet-6dd5216c.pth.tar",
                                                url="https://github.com/Lornatang/SRGAN-PyTorch"))


@register_model
def srresnet_micro(**kwargs) -> SRResNet:
    """CPU tests/demos: 16 channels, 2 residual blocks, x4."""
    return SRResNet(**{"upscale": 4, "channels": 16, "num_blocks": 2, **kwargs})
