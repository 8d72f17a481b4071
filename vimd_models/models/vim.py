"""Vision Mamba (ViM) with a middle class token and the bidirectional "v2" mixer (Zhu et al. 2024).

Parameter names follow hustvl/Vim (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``layers.{i}.norm``, ``layers.{i}.mixer.*``, ``norm_f``, ``head``), so its checkpoints load by name.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..features import resolve_indices
from ..layers import DropPath, Mamba, PatchEmbed, RMSNorm
from ..registry import register_model
from .common import ModelApi

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


class VisionMamba(ModelApi, nn.Module):
    """x (B, 3, img_size, img_size) in [0, 1] -> logits (B, num_classes).

    ``normalize`` applies ImageNet mean/std first (off by default: the ViMD protocol feeds [0, 1]).
    drop_path_rate: the ViM schedule (layer i gets linspace(0, rate, depth)[i - 1], layer 0 none).
    """
    classifier_name = "head"
    head_init_std = 0.02
    release_renames = ()  # hustvl/Vim checkpoints ({"model": sd, "args": ...}) use these names

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
            hidden, residual = self.run_block(blk, hidden, residual)
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

    def tokens_to_map(self, tokens: Tensor) -> Tensor:
        """(B, L, D) tokens -> (B, D, h, w) on the patch grid, the class token left out."""
        t = torch.cat((tokens[:, :self.cls_pos], tokens[:, self.cls_pos + 1:]), dim=1)
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *self.patch_embed.grid_size)


# hustvl's ImageNet-1k releases (middle class token), Apache-2.0: hustvl/Vim-{tiny,small}-midclstok,
# vim_{t,s}_midclstok_{tag}.pth; the "ft_" ones were fine-tuned at stride 8. They were trained on
# ImageNet mean/std-normalised input, so pretrained=True builds the model with normalize=True (it
# then takes [0, 1] pixels).
def _hustvl(size: str, tag: str, top1: float) -> dict:
    return dict(hf_hub_id=f"hustvl/Vim-{size}-midclstok", hf_hub_filename=f"vim_{size[0]}_midclstok_{tag}.pth",
                num_classes=1000, top1=top1, model_kwargs=dict(normalize=True), input_size=(3, 224, 224),
                mean=IMAGENET_MEAN, std=IMAGENET_STD, license="apache-2.0", paper="arXiv:2401.09417")


TINY, SMALL, BASE = dict(embed_dim=192, depth=24), dict(embed_dim=384, depth=24), dict(embed_dim=768, depth=24)
S16, S8 = dict(patch_size=16, stride=16), dict(patch_size=16, stride=8)
MICRO = dict(embed_dim=48, depth=4, d_state=8, patch_size=4, img_size=32, num_classes=10)

# name -> (architecture, pretrained config, description)
VARIANTS: dict[str, tuple[dict, dict, str]] = {
    "vim_tiny_patch16_224": ({**TINY, **S16}, _hustvl("tiny", "76p1acc", 76.1), "ViM-Ti/16 at 224 (L = 197)."),
    "vim_small_patch16_224": ({**SMALL, **S16}, _hustvl("small", "80p5acc", 80.5), "ViM-S/16 at 224."),
    "vim_base_patch16_224": ({**BASE, **S16}, {}, "ViM-B/16 at 224."),
    "vim_tiny_patch16_stride8_224": ({**TINY, **S8}, _hustvl("tiny", "ft_78p3acc", 78.3), "ViM-Ti/16, stride 8 (L = 730)."),
    "vim_small_patch16_stride8_224": ({**SMALL, **S8}, _hustvl("small", "ft_81p6acc", 81.6), "ViM-S/16, stride 8."),
    "vim_micro": (MICRO, {}, "CPU tests/demos: D=48, depth 4, N=8, patch 4 at 32x32 (L = 65); img_size=64, "
                             "patch_size=8 works."),
}


def _factory(name: str, defaults: dict, doc: str):
    def factory(**kwargs) -> VisionMamba:
        return VisionMamba(**{**defaults, **kwargs})
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return factory


for _name, (_defaults, _cfg, _doc) in VARIANTS.items():
    globals()[_name] = register_model(_factory(_name, _defaults, _doc), pretrained_cfg=_cfg)
