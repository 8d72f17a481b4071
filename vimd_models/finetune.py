"""Fine-tuning from release weights named by a config key (``model.finetune``, ``model.sr_checkpoint``)."""
from __future__ import annotations

import os
from typing import Callable

from torch import nn

from .convert import load_pretrained
from .errors import UserError
from .registry import release_source


def load_release(model: nn.Module, path: str | None, key: str, opt_out: str, log: Callable[[str], None] | None = None,
                 require_all: bool = False) -> dict | None:
    """``convert.load_pretrained`` from the file the config key ``key`` names (None or "none":
    nothing to load). A missing file, or one that does not fit, is one UserError line: the key,
    the file, where a registered release of that name comes from, and ``opt_out``."""
    if path is None or str(path).lower() == "none":
        return None
    if not os.path.isfile(path):
        src = release_source(os.path.basename(path))
        get = f"get {src} into {os.path.dirname(path) or '.'}/" if src else "put the file there"
        raise UserError(f"config '{key}': {path} not found; {get}, or {opt_out}")
    try:
        return load_pretrained(model, path, log, require_all)
    except (ValueError, RuntimeError, EOFError) as e:
        raise UserError(f"config '{key}': {str(e).splitlines()[0]}") from None
