"""``create_model(..., features_only=True)``: a model that returns its intermediate features.

Every family's ``forward_intermediates(x)`` gives ``(output, [features])`` in the order of its
``feature_info`` (ViM: each layer; ResNet: each stage; SRResNet: each residual block; DVMSR:
each RSSB). ``FeatureListNet`` keeps the entries at ``out_indices`` (positions in
``feature_info``; an int k: the last k; default all) and returns maps (B, C, H, W); ViM's token
features (B, L, D) become (B, D, h, w) on the patch grid, the class token left out.
"""
from __future__ import annotations

import inspect
from typing import Sequence

from torch import Tensor, nn


class FeatureInfo(list):
    """``feature_info`` of the kept features: dicts with ``num_chs``, ``reduction``, ``module``."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]


def resolve_indices(indices: int | Sequence[int] | None, n: int) -> list[int]:
    """Positions among n features: None: all n; an int k: the last k; a sequence: those (negative
    ints count from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 1 <= indices <= n:
            raise ValueError(f"indices={indices} must be between 1 and {n} (the last k)")
        return list(range(n - indices, n))
    out = []
    for i in indices:
        if not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f"indices must hold ints in [-{n}, {n}), got {i!r}")
        out.append(i % n)
    return out


class FeatureListNet(nn.Module):
    """``forward(x) -> [feature maps at out_indices]``; ``model`` stays reachable as ``.model``
    (its weights load and save under the ``model.`` prefix)."""

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None):
        super().__init__()
        info = getattr(model, "feature_info", None)
        if not info or not hasattr(model, "forward_intermediates"):
            raise TypeError(f"{type(model).__name__} has no feature_info / forward_intermediates")
        self.model = model
        self.out_indices = resolve_indices(out_indices, len(info))
        self.feature_info = FeatureInfo(dict(info[i]) for i in self.out_indices)
        self.pretrained_cfg = self.default_cfg = getattr(model, "pretrained_cfg", {})
        self._takes_indices = "indices" in inspect.signature(model.forward_intermediates).parameters

    def forward(self, x: Tensor) -> list[Tensor]:
        if self._takes_indices:
            _, feats = self.model.forward_intermediates(x, self.out_indices)
        else:
            _, every = self.model.forward_intermediates(x)
            feats = [every[i] for i in self.out_indices]
        to_map = getattr(self.model, "tokens_to_map", None)
        return [to_map(f) if to_map is not None and f.dim() == 3 else f for f in feats]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

