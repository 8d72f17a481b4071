"""The experiment configs shipped with the package (``<name>.yaml`` in this folder).

``vimd train vimd_cub`` and ``vimd train path/to/my.yaml`` both work: ``resolve_config_path``
turns a packaged config's name into its file and leaves a path to an existing file as it is.
"""
from __future__ import annotations

import difflib
import os

from ..errors import UserError

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
_SUFFIXES = (".yaml", ".yml")


def list_configs() -> list[str]:
    """Names of the packaged configs (file names without ``.yaml``)."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))


def resolve_config_path(name_or_path: str) -> str:
    """An existing file, else a packaged config named ``name`` or ``name.yaml``; otherwise a
    UserError that names close packaged configs."""
    if os.path.isfile(name_or_path):
        return name_or_path
    if os.sep not in name_or_path and "/" not in name_or_path:
        name = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
        packaged = os.path.join(CONFIG_DIR, name + ".yaml")
        if os.path.isfile(packaged):
            return packaged
    stem = os.path.basename(name_or_path)
    for suffix in _SUFFIXES:
        stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
    close = difflib.get_close_matches(stem, list_configs(), n=3, cutoff=0.6)
    hint = f"; packaged configs with a close name: {', '.join(close)}" if close else ""
    raise UserError(f"config file not found: {name_or_path}{hint} (the packaged configs are in {CONFIG_DIR})")
