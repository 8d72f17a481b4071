"""Load the official releases' state dicts, and our own weights, into our modules by key name.

- hustvl/Vim checkpoints (``{"model": sd, "args": Namespace, ...}``): names already match
  ``VisionMamba``.
- The DVMSR NTIRE 2024 checkpoint: ``patch_embed.norm.*`` -> ``norm_in.*`` and
  ``layers.{i}.residual_group.blocks.*`` -> ``layers.{i}.blocks.*``; the rest match ``DVMSR``.
- The SRResNet x4 release (``{"state_dict": sd}``): names match ``SRResNet``.
- torchvision's ResNet state dicts (``resnet18-f37072fd.pth``, ``resnet34-b627a593.pth``): names
  match ``ResNet``.
``load_official`` / ``load_checkpoint``: every key must find a parameter/buffer of the same shape,
and every one of ours must be filled; otherwise a ValueError lists the missing, unexpected and
mis-shaped keys. ``load_pretrained`` (fine-tuning from a release: ``model.finetune``,
``create_model(pretrained=True)``, ``model.sr_checkpoint``) finds the part of a composite model the
file belongs to, drops a head of other classes, resamples ViM's position embedding and reports what
it loaded. Files are read with ``torch.load(weights_only=True)`` (which also admits the
``argparse.Namespace`` the DeiT/Vim training script pickles beside the weights) or safetensors:
nothing else is unpickled.

The renames are keyed by class name, so this module does not import the model families.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_WRAPPERS = ("model", "model_ema", "state_dict", "params_ema", "params", "model_state")
_RENAMES = {
    "DVMSR": [(r"^patch_embed\.norm\.", "norm_in."), (r"^layers\.(\d+)\.residual_group\.blocks\.", r"layers.\1.blocks.")],
    "VisionMamba": [],
    "SRResNet": [],
}


def _rules(model: nn.Module) -> list | None:
    return next((_RENAMES[c.__name__] for c in type(model).__mro__ if c.__name__ in _RENAMES), None)


def unwrap(sd: dict) -> dict[str, Tensor]:
    """Strip checkpoint wrappers ({"model": ...}, {"state_dict": ...}, {"params": ...}) and a
    DataParallel ``module.`` prefix."""
    while isinstance(sd, dict) and not any(isinstance(v, Tensor) for v in sd.values()):
        key = next((k for k in _WRAPPERS if k in sd), None)
        if key is None:
            raise ValueError(f"no state dict found in checkpoint with keys {sorted(sd)[:10]}")
        sd = sd[key]
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A file's tensors: safetensors (release weights or a vimd training state, whose model it
    takes) or a torch pickle read with ``weights_only=True``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if str(path).endswith(".safetensors"):
        from .checkpoint import load_weights
        return load_weights(os.fspath(path))
    try:
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        torch.serialization.add_safe_globals([argparse.Namespace])  # torch 2.4: no scoped form
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((ln for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise ValueError(f"{path} holds pickled objects other than tensors, containers and argparse.Namespace; "
                         f"they are not unpickled ({detail.strip() or 'weights_only load failed'})") from None


def convert_state_dict(model: nn.Module, state_dict: dict) -> dict[str, Tensor]:
    """Official names -> ours for ``model``'s family (no checks; see ``load_official``)."""
    rules = _rules(model)
    if rules is None:
        raise TypeError(f"no converter for {type(model).__name__}; supported: {', '.join(_RENAMES)}")
    out = {}
    for k, v in unwrap(state_dict).items():
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def our_names(model: nn.Module, state_dict: dict) -> dict[str, Tensor]:
    """``state_dict`` under our names: official names converted for the families that have a
    converter (our own names pass through unchanged), checkpoint wrappers stripped."""
    return convert_state_dict(model, state_dict) if _rules(model) is not None else unwrap(state_dict)


def resample_pos_embed(pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """ViM's position embedding (1, M + 1, D), class token in the middle (index M // 2), resampled
    to a ``grid`` of patches: the patch entries bicubically on their square grid, the class entry
    kept and put back in the middle of the new sequence. (Vim's fine-tune script takes the first
    entry as the class token, the layout of a leading class token.)"""
    m = pos_embed.shape[1] - 1
    side = math.isqrt(m)
    if side * side != m:
        raise ValueError(f"pos_embed has {m} patch entries, not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    cls = pos_embed[:, m // 2: m // 2 + 1]
    patches = torch.cat((pos_embed[:, : m // 2], pos_embed[:, m // 2 + 1:]), dim=1)
    maps = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    maps = F.interpolate(maps, size=tuple(grid), mode="bicubic", align_corners=False)
    patches = maps.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)
    k = patches.shape[1] // 2
    return torch.cat((patches[:, :k], cls, patches[:, k:]), dim=1)


def adapt_state_dict(model: nn.Module, sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Fine-tuning from a release: drop a classifier whose shape differs from the model's (those
    keys are returned: the model keeps its fresh head), and resample ViM's ``pos_embed`` to the
    model's token grid."""
    ours = model.state_dict()
    dropped = []
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is not None and getattr(model, "classifier_name", None):
        head = {id(p) for p in get_classifier().parameters()}
        for name, p in model.named_parameters():
            if id(p) in head and name in sd and sd[name].shape != p.shape:
                dropped.append(name)
    sd = {k: v for k, v in sd.items() if k not in dropped}
    if "pos_embed" in sd and "pos_embed" in ours and sd["pos_embed"].shape != ours["pos_embed"].shape:
        sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], model.patch_embed.grid_size)
    return sd, dropped


def _load_exact(model: nn.Module, sd: dict[str, Tensor], optional: list[str] = ()) -> nn.Module:
    """load_state_dict, after checking every key and shape; keys in ``optional`` may be missing."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(sd) - set(optional))
    unexpected = sorted(set(sd) - set(ours))
    bad_shape = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(ours[k].shape)}"
                       for k in set(sd) & set(ours) if sd[k].shape != ours[k].shape)
    if missing or unexpected or bad_shape:
        parts = [f"{name} ({len(keys)}): {', '.join(keys)}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", bad_shape)) if keys]
        raise ValueError(f"checkpoint does not fit {type(model).__name__}:\n  " + "\n  ".join(parts))
    model.load_state_dict(sd, strict=not optional)
    return model


def load_official(model: nn.Module, checkpoint: str | os.PathLike | dict) -> nn.Module:
    """Load an official checkpoint (path or dict) into ``model``, strictly by name and shape."""
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    return _load_exact(model, convert_state_dict(model, raw))


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | dict, adapt: bool = False) -> nn.Module:
    """Load our weights (safetensors, a training state) or an official release into ``model``.

    Official names are converted for the families that have a converter (our own names pass
    through unchanged). ``adapt=True`` (fine-tuning from a release) drops a classifier of other
    classes and resamples ViM's position embedding; otherwise every key must fit exactly.
    """
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    sd = our_names(model, raw)
    dropped: list[str] = []
    if adapt:
        sd, dropped = adapt_state_dict(model, sd)
    return _load_exact(model, sd, dropped)


def _is_model(m: nn.Module) -> bool:
    return any(c.__name__ == "ModelApi" for c in type(m).__mro__)


def _fit(model: nn.Module, raw: dict) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str], int]:
    """``raw`` under ``model``'s names, then adapted for fine-tuning; (named, adapted, dropped head
    keys, how many adapted tensors fit a parameter/buffer of the same name and shape)."""
    named = our_names(model, raw)
    sd, dropped = adapt_state_dict(model, named)
    ours = model.state_dict()
    return named, sd, dropped, sum(k in ours and ours[k].shape == v.shape for k, v in sd.items())


def _few(keys: list[str], n: int = 3) -> str:
    return "" if not keys else f" ({', '.join(keys[:n])}{', ...' if len(keys) > n else ''})"


def load_pretrained(model: nn.Module, checkpoint: str | os.PathLike | dict, log: Callable[[str], None] | None = None,
                    require_all: bool = False) -> dict:
    """Fine-tune initialisation: load a release (or our weights) into ``model`` or into the part of a
    composite model it belongs to (SRVM-Net: a ViM file into ``classifier``, an SR release into
    ``sr``; the part where most tensors fit by name and shape).

    A head of other classes is dropped (one line to ``log``) and ViM's ``pos_embed`` is resampled
    to the model's grid; any other shape mismatch, or no tensor fitting at all, is a ValueError;
    so are missing keys with ``require_all``. ``log`` gets a summary line. Returns
    {"target": the part's name ("" for the model), "loaded", "missing", "unexpected", "dropped": key lists}.
    """
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    raw = unwrap(raw)
    parts = [("", model)] + [(n + ".", m) for n, m in model.named_children() if _is_model(m)]
    fits = [(prefix, part, *_fit(part, raw)) for prefix, part in parts]
    prefix, part, named, sd, dropped, n = max(fits, key=lambda f: f[-1])
    what = os.path.basename(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint"
    if n == 0:
        raise ValueError(f"no tensor of {what} fits {type(model).__name__} or its parts by name and shape "
                         f"(checkpoint keys{_few(sorted(raw))})")
    ours = part.state_dict()
    bad = sorted(f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}" for k, v in sd.items()
                 if k in ours and ours[k].shape != v.shape)
    missing = sorted(set(ours) - set(sd) - set(dropped))
    if bad or (require_all and missing):
        raise ValueError(f"{what} does not fit {type(part).__name__}: "
                         + "; ".join(f"{name} {len(keys)}{_few(keys)}" for name, keys in
                                     (("shape mismatch", bad), ("missing", missing)) if keys))
    unexpected = sorted(k for k in sd if k not in ours)
    part.load_state_dict({k: v for k, v in sd.items() if k in ours}, strict=False)
    where = f"{prefix[:-1]} ({type(part).__name__})" if prefix else type(part).__name__
    if log is not None:
        if dropped:
            log(f"{what}: head dropped ({', '.join(f'{k} {tuple(named[k].shape)}' for k in dropped)}; "
                f"the model's: {', '.join(str(tuple(ours[k].shape)) for k in dropped)}), the model's starts fresh")
        log(f"{what}: loaded {n} tensors into {where}; missing {len(missing)}{_few(missing)}, "
            f"unexpected {len(unexpected)}{_few(unexpected)}")
    return {"target": prefix[:-1], "loaded": sorted(k for k in sd if k in ours), "missing": missing,
            "unexpected": unexpected, "dropped": dropped}


