"""Vision Mamba (ViM) with a middle class token and the bidirectional "v2" mixer (SPECS.md "ViM").

Parameter names follow hustvl/Vim (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``layers.{i}.norm``, ``layers.{i}.mixer.*``, ``norm_f``, ``head``), so its checkpoints load by name.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..layers import DropPath, Mamba, PatchEmbed, RMSNorm
from ..registry import register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Block(nn.Module):
    """Prenorm block: residual += drop_path(hidden); hidden = mixer(norm(residual)); residual in fp32."""

    def __init__(self, dim: int, mixer: nn.Module, drop_path: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(dim, eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, hidden: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        branch = hidden.float() if residual is None else self.drop_path(hidden).float()
        residual = branch if residual is None else residual + branch
        return self.mixer(self.norm(residual.to(hidden.dtype))), residual


def resolve_indices(indices: int | Sequence[int] | None, n: int) -> list[int]:
    """None: all n; an int k: the last k; a sequence: those (negative ints count from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 1 <= indices <= n:
            raise ValueError(f"indices={indices} must be between 1 and {n} (the last k layers)")
        return list(range(n - indices, n))
    out = []
    for i in indices:
        if not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f"indices must hold ints in [-{n}, {n}), got {i!r}")
        out.append(i % n)
    return out


class VisionMamba(nn.Module):
    """x (B, 3, img_size, img_size) in [0, 1] -> logits (B, num_classes).

    ``normalize`` applies ImageNet mean/std first (off by default: the ViMD protocol feeds [0, 1]).
    drop_path_rate: the ViM schedule (layer i gets linspace(0, rate, depth)[i - 1], layer 0 none).
    """

    def __init__(self, num_classes: int = 1000, img_size: int = 224, patch_size: int = 16,
                 stride: int | None = None, embed_dim: int = 192, depth: int = 24, d_state: int = 16,
                 expand: int = 2, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-5, in_chans: int = 3, normalize: bool = False,
                 backend: str | None = None):
        super().__init__()
        if num_classes < 0 or depth < 1 or embed_dim < 1:
            raise ValueError(f"need num_classes >= 0, depth >= 1, embed_dim >= 1; got "
                             f"{num_classes}, {depth}, {embed_dim}")
        stride = patch_size if stride is None else stride
        self.num_classes, self.num_features, self.embed_dim = num_classes, embed_dim, embed_dim
        self.img_size, self.normalize, self.backend = img_size, normalize, backend
        self.patch_embed = PatchEmbed(img_size, patch_size, stride, in_chans, embed_dim)
        m = self.patch_embed.num_patches
        self.cls_pos = m // 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, m + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth).tolist()
        scale = 1.0 / math.sqrt(depth)
        self.layers = nn.ModuleList(
            Block(embed_dim, Mamba(embed_dim, d_state=d_state, expand=expand, bidirectional=True,
                                   out_proj_scale=scale, backend=backend), dpr[i], norm_eps)
            for i in range(depth))
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = RMSNorm(embed_dim, norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.feature_info = [dict(num_chs=embed_dim, reduction=stride, module=f"layers.{i}")
                             for i in range(depth)]

    def _tokens(self, x: Tensor) -> Tensor:
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        t = self.patch_embed(x)
        cls = self.cls_token.expand(t.shape[0], -1, -1).to(t.dtype)
        t = torch.cat((t[:, :self.cls_pos], cls, t[:, self.cls_pos:]), dim=1)
        return self.pos_drop(t + self.pos_embed.to(t.dtype))

    def _run(self, x: Tensor, taps: Sequence[int] = ()) -> tuple[Tensor, list[Tensor]]:
        hidden, residual, feats = self._tokens(x), None, []
        for i, blk in enumerate(self.layers):
            hidden, residual = blk(hidden, residual)
            if i in taps:  # H_j = final_norm(residual_j + hidden_j)
                feats.append(self.norm_f((residual + hidden.float()).to(hidden.dtype)))
        out = self.norm_f((residual + self.drop_path(hidden).float()).to(hidden.dtype))
        return out, feats

    def forward_features(self, x: Tensor) -> Tensor:
        """Final-normed tokens (B, L, D), the class token at index ``cls_pos``."""
        return self._run(x)[0]

    def forward_head(self, feats: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = feats[:, self.cls_pos]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None
                              ) -> tuple[Tensor, list[Tensor]]:
        """(logits, [H_j for j in indices]) with H_j (B, L, D); default: every layer."""
        taps = resolve_indices(indices, len(self.layers))
        out, feats = self._run(x, taps)
        order = sorted(set(taps))  # _run collects in layer order; map back to the asked order
        return self.forward_head(out), [feats[order.index(j)] for j in taps]


def _vim(defaults: dict, kwargs: dict) -> VisionMamba:
    return VisionMamba(**{**defaults, **kwargs})


@register_model
def vim_tiny_patch16_224(**kwargs) -> VisionMamba:
    return _vim(dict(embed_dim=192, depth=24, patch_size=16, stride=16), kwargs)


@register_model
def vim_small_patch16_224(**kwargs) -> VisionMamba:
    return _vim(dict(embed_dim=384, depth=24, patch_size=16, stride=16), kwargs)


@register_model
def vim_base_patch16_224(**kwargs) -> VisionMamba:
    return _vim(dict(embed_dim=768, depth=24, patch_size=16, stride=16), kwargs)


@register_model
def vim_tiny_patch16_stride8_224(**kwargs) -> VisionMamba:
    return _vim(dict(embed_dim=192, depth=24, patch_size=16, stride=8), kwargs)


@register_model
def vim_small_patch16_stride8_224(**kwargs) -> VisionMamba:
    return _vim(dict(embed_dim=384, depth=24, patch_size=16, stride=8), kwargs)


@register_model
def vim_micro(**kwargs) -> VisionMamba:
    """CPU tests/demos: D=48, depth 4, N=8, patch 4 at 32x32 (L = 65); img_size=64, patch_size=8 works."""
    return _vim(dict(embed_dim=48, depth=4, d_state=8, patch_size=4, img_size=32,
                     num_classes=10), kwargs)
