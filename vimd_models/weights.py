"""Every way weights get into a model: one module, one entry point (``load``).

Readers: our safetensors (release weights, or the model inside a vimd training state), the
official releases (torch pickles read with ``weights_only=True``, which also admits the
``argparse.Namespace`` the DeiT/Vim training script pickles beside the weights; nothing else is
unpickled) and the Hugging Face Hub (``pretrained_weights``). Official names become ours through
the family's ``release_renames`` (regex rules declared on the model class beside its
definition: DVMSR renames two prefixes, ViM and SRResNet match as released); checkpoint wrappers
(``{"model": ...}``, ``{"state_dict": ...}``, ``{"params": ...}``) and a DataParallel
``module.`` prefix are stripped.

``load(model, source, finetune=..., what=...)`` is what every command and config key uses
(``vimd eval/sr/predict --weights``, ``model.pretrained``, ``model.finetune``,
``model.sr_checkpoint``, ``teacher.checkpoint``, ``create_model(pretrained=..., checkpoint_path=...)``):

- exact (default): every key must find a parameter/buffer of the same name and shape and every
  one of ours must be filled;
- ``finetune=True``: the part of a composite model the file belongs to is found (SRVM-Net: a ViM
  file into ``classifier``, an SR release into ``sr``), a head of other classes is dropped and
  ViM's position embedding resampled to the model's grid, and what was loaded is reported.

Library calls get ValueError / FileNotFoundError / TypeError; with ``what`` (the argument or config
key that named the file) every failure is one ``UserError`` line starting with it.
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
from safetensors import SafetensorError
from torch import Tensor, nn

from .errors import UserError

_WRAPPERS = ("model", "model_ema", "state_dict", "params_ema", "params", "model_state")


def _rules(model: nn.Module) -> tuple | None:
    """The family's release renames (``ModelApi.release_renames``); None: the family has no
    official release format."""
    return getattr(model, "release_renames", None)


def unwrap(sd: dict) -> dict[str, Tensor]:
    """Strip checkpoint wrappers ({"model": ...}, {"state_dict": ...}, {"params": ...}) and a
    DataParallel ``module.`` prefix."""
    while isinstance(sd, dict) and not any(isinstance(v, Tensor) for v in sd.values()):
        key = next((k for k in _WRAPPERS if k in sd), None)
        if key is None:
            raise ValueError(f"no state dict found in checkpoint with keys {sorted(sd)[:10]}")
        sd = sd[key]
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def _read_safetensors(path: str) -> dict[str, Tensor]:
    """Release weights, or the trained model inside a vimd training state."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .checkpoint import FORMAT, load_state
    try:
        with safe_open(path, "pt") as f:
            header = f.metadata() or {}
        if header.get("format") == FORMAT:
            state, _ = load_state(path)
            return {k[len("model."):]: v for k, v in state["task"].items() if k.startswith("model.")}
        return load_file(path)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{path} is corrupt or not safetensors ({str(e).splitlines()[0]})") from None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A file's tensors: safetensors (release weights or a vimd training state, whose model it
    takes) or a torch pickle read with ``weights_only=True``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {os.fspath(path)} not found")
    if str(path).endswith(".safetensors"):
        return _read_safetensors(os.fspath(path))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((ln for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise ValueError(f"{path} holds pickled objects other than tensors, containers and argparse.Namespace; "
                         f"they are not unpickled ({detail.strip() or 'weights_only load failed'})") from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is corrupt or not a torch checkpoint ({str(e).splitlines()[0]})") from None


def convert_state_dict(model: nn.Module, state_dict: dict) -> dict[str, Tensor]:
    """Official names -> ours for ``model``'s family (no checks; see ``load_official``)."""
    rules = _rules(model)
    if rules is None:
        raise TypeError(f"no converter for {type(model).__name__}: its family declares no release_renames "
                        "(weights saved by vimd load by name with load_checkpoint)")
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



def load_into(module: nn.Module, state_dict: dict, where: str, strict: bool = True) -> None:
    """``load_state_dict`` of a state under our names (a model's, or a whole training task's on
    resume), with a one-line UserError listing missing / unexpected / mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = []
    if shapes:
        problems.append(f"shape mismatch: {', '.join(shapes[:3])}{' ...' if len(shapes) > 3 else ''}")
    if strict and missing:
        problems.append(f"missing keys: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} ({len(missing)})")
    if strict and unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)})")
    if problems:
        raise UserError(f"checkpoint {where} does not match the model: {'; '.join(problems)}")
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=strict)


# ----------------------------------------------------------------------------- the Hub

def hf_hub_download(repo_id: str, filename: str) -> str:
    """The local path of ``filename`` in the Hub repository ``repo_id`` (downloaded once into
    huggingface_hub's cache; ``HF_HUB_OFFLINE=1``, ``HF_HOME`` / ``HF_HUB_CACHE`` and tokens apply)."""
    try:
        from huggingface_hub import hf_hub_download as download
    except ImportError:
        raise ImportError(f"downloading {repo_id}/{filename} needs huggingface_hub: "
                          "pip install 'vimd[hub]', or pass pretrained_file=<local copy>") from None
    return download(repo_id=repo_id, filename=filename, library_name="vimd")


def pretrained_weights(cfg: dict, pretrained_file: str | os.PathLike | None = None) -> str:
    """The file to initialise ``cfg["architecture"]`` from: ``pretrained_file`` when given, else the
    Hub file of its pretrained config."""
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


# ----------------------------------------------------------------------------- the entry point

def _not_found(path: str, what: str, opt_out: str | None) -> UserError:
    """One line: the argument or key, the file, where a registered release of that name comes
    from, and how to go on without it."""
    from .registry import release_source
    src = release_source(os.path.basename(path))
    msg = f"{what}: weights file {path} not found"
    if src:
        msg += f"; get {src} into {os.path.dirname(path) or '.'}/"
    return UserError(msg + (f", or {opt_out}" if opt_out else ""))


def load(model: nn.Module, source: str | os.PathLike | dict | None, *, finetune: bool = False,
         require_all: bool = False, what: str | None = None, opt_out: str | None = None,
         log: Callable[[str], None] | None = None) -> dict | None:
    """Load ``source`` (a weights file of any supported format, or a state dict) into ``model``.

    Exact by default (``load_checkpoint``); ``finetune=True`` is ``load_pretrained`` (the part the
    file fits, a head of other classes dropped, ``pos_embed`` resampled; ``require_all``: no key of
    the part may stay unfilled; ``log`` gets the summary lines). None or "none": nothing to load.
    With ``what`` (e.g. "--weights", "config 'model.finetune'") every failure is one UserError
    line starting with it (``opt_out``, when given, ends a missing-file line); without it the
    library errors pass through. Returns ``load_pretrained``'s report, or ``{"loaded": keys}``.
    """
    if source is None or (isinstance(source, str) and source.lower() == "none"):
        return None
    if what is not None and not isinstance(source, dict) and not os.path.isfile(source):
        raise _not_found(os.fspath(source), what, opt_out)
    try:
        if finetune:
            return load_pretrained(model, source, log, require_all)
        load_checkpoint(model, source)
        return {"loaded": sorted(model.state_dict())}
    except (ValueError, TypeError, FileNotFoundError) as e:
        if what is None:
            raise
        raise UserError(f"{what}: " + "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())) from None


def read(model: nn.Module, source: str | os.PathLike | dict, what: str) -> dict[str, Tensor]:
    """``source``'s tensors under ``model``'s names (official names converted, wrappers stripped),
    without loading them: for a caller that inspects them first (``vimd predict`` sizes the head
    from the file); failures are one UserError line starting with ``what``."""
    if not isinstance(source, dict) and not os.path.isfile(source):
        raise _not_found(os.fspath(source), what, None)
    try:
        raw = read_checkpoint(source) if not isinstance(source, dict) else source
        return our_names(model, raw)
    except (ValueError, TypeError) as e:
        raise UserError(f"{what}: {str(e).splitlines()[0]}") from None
