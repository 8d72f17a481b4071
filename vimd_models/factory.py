"""``create_model``: a registered model built, its weights loaded, or wrapped for its features."""
from __future__ import annotations

import inspect
import logging
import os
from typing import Callable, Sequence

from torch import nn

from .registry import _entrypoint, get_pretrained_cfg


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
        file, or ``pretrained_file``) through ``weights.load(finetune=True)`` (as the ``model.finetune``
        config key): a head whose classes differ from ``num_classes`` is left freshly initialised,
        ViM's position embedding is resampled to the model's token grid, a composite model takes
        the file into the part it fits, and a summary line is logged (logger ``vimd_models``).
    checkpoint_path: then load these weights exactly (our safetensors, a training state, or an
        official release checkpoint, by name through ``vimd_models.weights``).
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
        from . import weights
        if pretrained:
            weights.load(model, weights.pretrained_weights(cfg, pretrained_file), finetune=True,
                         log=logging.getLogger("vimd_models").info)
        if checkpoint_path is not None:
            weights.load(model, checkpoint_path)
    if features_only:
        from .features import FeatureListNet
        return FeatureListNet(model, out_indices)
    return model
