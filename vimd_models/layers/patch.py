"""Image -> token sequence with a strided convolution (ViM's PatchEmbed; overlapping when stride < patch)."""
from __future__ import annotations

import math

from torch import Tensor, nn


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, stride: int = 16, in_chans: int = 3,
                 embed_dim: int = 192):
        super().__init__()
        for name, v in (("img_size", img_size), ("patch_size", patch_size), ("stride", stride)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if patch_size > img_size:
            raise ValueError(f"patch_size={patch_size} is larger than img_size={img_size}")
        self.img_size, self.patch_size, self.stride = img_size, patch_size, stride
        side = (img_size - patch_size) // stride + 1
        self.grid_size = (side, side)
        self.num_patches = side * side
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride)
        # lecun normal (the ViM release's patch-embed init), zero bias
        fan_in = in_chans * patch_size * patch_size
        nn.init.trunc_normal_(self.proj.weight, std=math.sqrt(1.0 / fan_in) / 0.87962566103423978)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"x must be (batch, {self.proj.in_channels}, {self.img_size}, "
                             f"{self.img_size}), got {tuple(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, M, D)
