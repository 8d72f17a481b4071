"""The model registry (timm-style) and the weight-decay parameter groups.

``@register_model`` on a factory function registers it under its name; ``create_model(name,
**kwargs)`` builds it; ``list_models(pattern)`` lists names (fnmatch pattern). The families live in
``vimd_models/models/`` (one file each) and register on import.

``param_groups(model, weight_decay)`` lives here too: it splits the trainable parameters into a
decayed group and a no-decay group (SPECS.md: A_log, D, biases, norms, pos_embed, cls_token).
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a factory ``fn(**kwargs) -> nn.Module`` under ``fn.__name__``."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    names = sorted(_MODELS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def _check_kwargs(name: str, fn: Callable, kwargs: dict) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return  # the constructor it forwards to has an explicit signature and names the culprit
    for k in kwargs:
        if k not in params:
            raise TypeError(f"{name}() got an unexpected keyword argument {k!r} "
                            f"(accepted: {', '.join(params)})")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown name -> ValueError with close matches, bad kwarg -> TypeError."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (`vimd models` lists all {len(_MODELS)})")
    fn = _MODELS[name]
    _check_kwargs(name, fn, kwargs)
    return fn(**kwargs)


_NO_DECAY_NAMES = ("pos_embed", "cls_token")


def _no_decay(name: str, p: nn.Parameter) -> bool:
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
            (no_decay if _no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
