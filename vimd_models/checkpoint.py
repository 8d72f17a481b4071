"""Checkpoints without pickle: tensors in safetensors, everything else as JSON in its metadata.

A training state is a nested dict whose leaves are tensors, numbers, strings, bools, None or
lists of those (model / optimizer state dicts, RNG states, counters). It is flattened to
``{"a/b/0": tensor}`` + a JSON tree with tensor placeholders, written to a temp file in the same
folder, fsynced, then ``os.replace``d over the target (atomic on POSIX), with the permissions a
plain ``open(path, "w")`` would give (0o666 minus the process umask).
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save

from .errors import UserError

FORMAT = "vimd-state-v1"
_T = "__tensor__"


def _flatten(obj: Any, prefix: str, tensors: dict) -> Any:
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {_T: key}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint keys must be str or int, got {type(k).__name__} at {prefix!r}")
        # int keys (optimizer state) are kept apart so they come back as ints
        return {"__dict__": [[k, _flatten(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {prefix!r})")


def _unflatten(obj: Any, tensors: dict) -> Any:
    if isinstance(obj, dict):
        if _T in obj:
            return tensors[obj[_T]]
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


_umask: int | None = None
_umask_lock = threading.Lock()


def file_mode() -> int:
    """0o666 minus the process umask, read once (``os.umask`` can only be read by setting it, so
    the read-and-restore runs under a lock)."""
    global _umask
    with _umask_lock:
        if _umask is None:
            _umask = os.umask(0o077)
            os.umask(_umask)
    return 0o666 & ~_umask


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(fd, file_mode())  # mkstemp creates 0o600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_state(path: str, state: dict, meta: dict | None = None) -> None:
    """Write a training state atomically."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, "", tensors)
    header = {"format": FORMAT, "tree": json.dumps(tree), "meta": json.dumps(meta or {})}
    atomic_write(path, save(tensors, metadata=header))


def load_state(path: str) -> tuple[dict, dict]:
    """Read a training state -> (state, meta). Errors are UserErrors naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        tensors = st_load(data)
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} is corrupt or not a vimd checkpoint ({str(e).splitlines()[0]})") from None
    if header.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not a vimd training state (format {header.get('format')!r})")
    try:
        state = _unflatten(json.loads(header["tree"]), tensors)
        meta = json.loads(header.get("meta", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {path} has a damaged header ({e})") from None
    return state, meta


def save_weights(path: str, state_dict: dict, meta: dict | None = None) -> None:
    """Release weights: a plain safetensors file (string metadata), written atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    md = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (meta or {}).items()}
    atomic_write(path, save(tensors, metadata=md))


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict, where: str) -> None:
    """Restore an optimiser's saved state (moments, step counts) but keep the hyperparameters it was
    built with (lr, weight decay, betas, momentum), so config values given on resume take effect."""
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise UserError(f"{where} does not fit the optimizer ({e})") from None
    for g, h in zip(opt.param_groups, hyper):
        g.update(h)
