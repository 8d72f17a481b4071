"""Where pretrained weights come from: a local file, or the Hugging Face Hub.

The Hub is reached through ``huggingface_hub`` (the optional extra ``pip install 'vimd[hub]'``),
so its cache (``HF_HOME`` / ``HF_HUB_CACHE``), ``HF_HUB_OFFLINE=1`` and tokens apply as usual: a
file already in the cache is used without a network request in offline mode.
"""
from __future__ import annotations

import os


def hf_hub_download(repo_id: str, filename: str) -> str:
    """The local path of ``filename`` in the Hub repository ``repo_id`` (downloaded once, cached)."""
    try:
        from huggingface_hub import hf_hub_download as download
    except ImportError:
        raise ImportError(f"downloading {repo_id}/{filename} needs huggingface_hub: "
                          "pip install 'vimd[hub]', or pass pretrained_file=<local copy>") from None
    return download(repo_id=repo_id, filename=filename, library_name="vimd")


def pretrained_weights(cfg: dict, pretrained_file: str | os.PathLike | None = None) -> str:
    """The file to initialise ``cfg["architecture"]`` from: ``pretrained_file`` when given, else the
    Hub file of the config."""
    if pretrained_file is not None:
        if not os.path.isfile(pretrained_file):
            raise FileNotFoundError(f"pretrained file not found: {pretrained_file}")
        return os.fspath(pretrained_file)
    if cfg.get("hf_hub_id"):
        return hf_hub_download(cfg["hf_hub_id"], cfg["hf_hub_filename"])
    release = f" (the release file {cfg['file_name']}" if cfg.get("file_name") else ""
    release += (f", from {cfg['url']})" if cfg.get("url") else ")") if release else ""
    raise ValueError(f"no download location is registered for {cfg['architecture']}: "
                     f"pass pretrained_file=<path>{release}")

