"""The model registry (timm-style) and the weight-decay parameter groups.

``register_model`` registers a factory function under its name, with an optional pretrained config;
``list_models(pattern)`` lists names (fnmatch pattern); ``vimd_models.factory.create_model`` builds
one (and loads weights, or wraps it for features). The families live in
``vimd_models/models/`` (one file each) and register on import.

A pretrained config is a dict; the keys used here:

- ``hf_hub_id``, ``hf_hub_filename``: the weights on the Hugging Face Hub (``pretrained=True``
  downloads them through ``huggingface_hub``, the optional extra ``vimd[hub]``, into its cache);
- ``file_name``: the release file, for weights with no Hub copy (pass ``pretrained_file=``);
- ``url``: where the release file is published, for weights with no Hub copy;
- ``num_classes``: the classes of the released head;
- ``model_kwargs``: model arguments the weights were trained with, applied under the caller's
  keyword arguments when ``pretrained=True`` (e.g. ``normalize=True`` for ImageNet mean/std);
- anything else (``input_size``, ``mean``, ``std``, ``license``, ``paper``) is information.

``param_groups(model, weight_decay)`` lives here too: it splits the trainable parameters into a
decayed group and a no-decay group (A_log, D, biases, norms, pos_embed, cls_token, as hustvl/Vim
groups them).
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_PRETRAINED_CFGS: dict[str, dict] = {}


def register_model(fn: Callable[..., nn.Module], pretrained_cfg: dict | None = None) -> Callable[..., nn.Module]:
    """Register a factory ``fn(**kwargs) -> nn.Module`` under ``fn.__name__``: as a decorator
    (``@register_model``) or as ``register_model(fn, pretrained_cfg={...})``."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    _PRETRAINED_CFGS[name] = dict(pretrained_cfg or {})
    return fn


def _has_weights(cfg: dict) -> bool:
    return bool(cfg.get("hf_hub_id") or cfg.get("file_name"))


def list_models(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Registered names, matching ``pattern`` (fnmatch) if given; ``pretrained=True``: only the
    models with released weights registered."""
    names = sorted(n for n in _MODELS if not pretrained or _has_weights(_PRETRAINED_CFGS[n]))
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (`vimd models` lists all {len(_MODELS)})")
    return _MODELS[name]


def get_pretrained_cfg(name: str) -> dict:
    """A copy of the model's pretrained config, with ``architecture`` = its name."""
    _entrypoint(name)
    return {"architecture": name, **copy.deepcopy(_PRETRAINED_CFGS[name])}


def release_source(file_name: str) -> str | None:
    """Where the release file ``file_name`` comes from, from the first registered pretrained config
    that names it: "<file> (the <model> release, <address>)"; None when no config names it."""
    for name, cfg in _PRETRAINED_CFGS.items():
        if file_name in (cfg.get("hf_hub_filename"), cfg.get("file_name")):
            where = (f"https://huggingface.co/{cfg['hf_hub_id']}/resolve/main/{file_name}" if cfg.get("hf_hub_id")
                     else cfg.get("url"))
            return f"{file_name} (the {name} release{', ' + where if where else ''})"
    return None


_NO_DECAY_NAMES = ("pos_embed", "cls_token")


def is_no_decay(name: str, p: nn.Parameter) -> bool:
    """Kept out of weight decay: every 1-D parameter (biases, norm weights, D), A_log, pos_embed,
    cls_token, and parameters marked ``_no_weight_decay``."""
    leaf = name.rsplit(".", 1)[-1]
    return (getattr(p, "_no_weight_decay", False) or p.ndim <= 1 or leaf in _NO_DECAY_NAMES
            or leaf.startswith("A_") or leaf in ("D", "D_b", "Ds", "A_logs"))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: decayed weights, and {A_log, D, biases, norms, pos_embed, cls_token}
    (every 1-D parameter is a bias, a norm weight, D or a scale) with weight_decay 0."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if is_no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
