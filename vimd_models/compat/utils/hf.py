"""mamba_ssm ``mamba_ssm.utils.hf``: a model's ``config.json`` and ``pytorch_model.bin``.

``model_name`` is a local directory holding them (or the file itself). Anything else is taken as
a Hugging Face Hub repository id and fetched with ``huggingface_hub`` when that is installed (it is
not a dependency of vimd).
"""
from __future__ import annotations

import json
import os

import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "pytorch_model.bin"


def _resolve(model_name: str, filename: str) -> str:
    path = os.fspath(model_name)
    if os.path.isdir(path):
        return os.path.join(path, filename)
    if os.path.isfile(path):
        return path
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise FileNotFoundError(f"{model_name!r} is neither a local directory nor a file, and fetching "
                                "it from the Hub needs huggingface_hub (pip install huggingface_hub)") from None
    return hf_hub_download(model_name, filename)


def load_config_hf(model_name):
    with open(_resolve(model_name, CONFIG_NAME)) as f:
        return json.load(f)


def load_state_dict_hf(model_name, device=None, dtype=None):
    # not float32: load on the CPU, cast there, then move (saves device memory)
    mapped_device = "cpu" if dtype not in [torch.float32, None] else device
    state_dict = torch.load(_resolve(model_name, WEIGHTS_NAME), map_location=mapped_device,
                            weights_only=True)
    if dtype is not None:
        state_dict = {k: v.to(dtype=dtype) for k, v in state_dict.items()}
    return {k: v.to(device=device) for k, v in state_dict.items()}


__all__ = ["load_config_hf", "load_state_dict_hf"]
