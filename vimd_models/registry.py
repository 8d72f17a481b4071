"""The model registry (timm-style) and the weight-decay parameter groups.

``register_model`` registers a factory function under its name, with an optional pretrained config;
``create_model(name, **kwargs)`` builds it (and loads weights, or wraps it for features);
``list_models(pattern)`` lists names (fnmatch pattern). The families live in
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
import inspect
import logging
import os
from typing import Callable, Sequence

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


def _check_kwargs(name: str, fn: Callable, kwargs: dict) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return  # the constructor it forwards to has an explicit signature and names the culprit
    for k in kwargs:
        if k not in params:
            raise TypeError(f"{name}() got an unexpected keyword argument {k!r} "
                            f"(accepted: {', '.join(params)})")


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | os.PathLike | None = None,
                 pretrained_file: str | os.PathLike | None = None, features_only: bool = False,
                 out_indices: int | Sequence[int] | None = None, **kwargs) -> nn.Module:
    """Build a registered model.

    pretrained: initialise from the released weights of the model's pretrained config (the Hub
        file, or ``pretrained_file``) through ``convert.load_pretrained`` (as the ``model.finetune``
        config key): a head whose classes differ from ``num_classes`` is left freshly initialised,
        ViM's position embedding is resampled to the model's token grid, a composite model takes
        the file into the part it fits, and a summary line is logged (logger ``vimd_models``).
    checkpoint_path: then load these weights exactly (our safetensors, a training state, or an
        official release checkpoint, by name through ``vimd_models.convert``).
    features_only: return a ``FeatureListNet`` giving the features at ``out_indices`` (positions
        in ``model.feature_info``; an int k: the last k; default all).

    Unknown name -> ValueError with close matches; bad kwarg -> TypeError.
    """
    fn = _entrypoint(name)
    cfg = get_pretrained_cfg(name)
    if pretrained_file is not None and not pretrained:
        raise TypeError("pretrained_file= is used with pretrained=True")
    if out_indices is not None and not features_only:
        raise TypeError("out_indices= is used with features_only=True")
    if pretrained:
        kwargs = {**cfg.get("model_kwargs", {}), **kwargs}
    _check_kwargs(name, fn, kwargs)
    model = fn(**kwargs)
    model.pretrained_cfg = model.default_cfg = cfg
    if pretrained or checkpoint_path is not None:
        from .convert import load_checkpoint, load_pretrained
        if pretrained:
            from .hub import pretrained_weights
            load_pretrained(model, pretrained_weights(cfg, pretrained_file), logging.getLogger("vimd_models").info)
        if checkpoint_path is not None:
            load_checkpoint(model, checkpoint_path)
    if features_only:
        from .features import FeatureListNet
        return FeatureListNet(model, out_indices)
    return model


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
