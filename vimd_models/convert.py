"""Load the official releases' state dicts into our modules, by key name and shape.

- hustvl/Vim checkpoints (``{"model": sd}``): names already match ``VisionMamba``.
- The DVMSR NTIRE 2024 checkpoint: ``patch_embed.norm.*`` -> ``norm_in.*`` and
  ``layers.{i}.residual_group.blocks.*`` -> ``layers.{i}.blocks.*``; the rest match ``DVMSR``.
- The SRResNet x4 release (``{"state_dict": sd}``): names match ``SRResNet``.
Every key must find a parameter/buffer of the same shape, and every one of ours must be filled;
otherwise a ValueError lists the missing, unexpected and mis-shaped keys. Files are read with
``torch.load(weights_only=True)`` or safetensors: nothing is unpickled beyond tensors.
"""
from __future__ import annotations

import os
import re

import torch
from torch import Tensor, nn

from .models.dvmsr import DVMSR
from .models.srresnet import SRResNet
from .models.vim import VisionMamba

_WRAPPERS = ("model", "state_dict", "params_ema", "params", "model_state")
_RENAMES = {
    DVMSR: [(r"^patch_embed\.norm\.", "norm_in."), (r"^layers\.(\d+)\.residual_group\.blocks\.", r"layers.\1.blocks.")],
    VisionMamba: [],
    SRResNet: [],
}


def unwrap(sd: dict) -> dict[str, Tensor]:
    """Strip checkpoint wrappers ({"model": ...}, {"state_dict": ...}, {"params": ...}) and a
    DataParallel ``module.`` prefix."""
    while isinstance(sd, dict) and not any(isinstance(v, Tensor) for v in sd.values()):
        key = next((k for k in _WRAPPERS if k in sd), None)
        if key is None:
            raise ValueError(f"no state dict found in checkpoint with keys {sorted(sd)[:10]}")
        sd = sd[key]
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def _read(path: str | os.PathLike) -> dict:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def convert_state_dict(model: nn.Module, state_dict: dict) -> dict[str, Tensor]:
    """Official names -> ours for ``model``'s family (no checks; see ``load_official``)."""
    rules = next((r for cls, r in _RENAMES.items() if isinstance(model, cls)), None)
    if rules is None:
        raise TypeError(f"no converter for {type(model).__name__}; supported: "
                        f"{', '.join(c.__name__ for c in _RENAMES)}")
    out = {}
    for k, v in unwrap(state_dict).items():
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def load_official(model: nn.Module, checkpoint: str | os.PathLike | dict) -> nn.Module:
    """Load an official checkpoint (path or dict) into ``model``, strictly by name and shape."""
    sd = convert_state_dict(model, _read(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(sd))
    unexpected = sorted(set(sd) - set(ours))
    bad_shape = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(ours[k].shape)}"
                       for k in set(sd) & set(ours) if sd[k].shape != ours[k].shape)
    if missing or unexpected or bad_shape:
        parts = [f"{name} ({len(keys)}): {', '.join(keys)}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", bad_shape)) if keys]
        raise ValueError(f"checkpoint does not fit {type(model).__name__}:\n  " + "\n  ".join(parts))
    model.load_state_dict(sd, strict=True)
    return model
