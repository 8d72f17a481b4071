"""Experiment configs: YAML files merged over the defaults, plus ``key.sub=value`` overrides.

The defaults are BASE (what the engine, the data and the models read) plus the keys every
registered training method declares (``Task.config``, vimd_models.tasks). Every key must exist
in them (a typo is a UserError naming the key and the file), except under the free-form sections
listed in FREE_FORM (model keyword arguments).
"""
from __future__ import annotations

import copy
import os
from typing import Any

import yaml

from ..configs import resolve_config_path
from ..data.check import MODES
from ..data.sr import CACHES
from ..errors import UserError
from ..tasks import TASKS, task_class
from ..tasks.base import check as _check
from ..tasks.base import one_of as _one_of
from .distributed import DEVICES, device_spec_ok
from .optim import OPTIMIZERS, SCHEDULES

BASE: dict[str, Any] = {
    "task": "classify",           # a name in vimd_models.tasks.TASKS
    "name": None,                 # run name; default: config file stem
    "output_dir": "runs",         # the run writes to <output_dir>/<name>/
    "seed": 0,
    "backend": None,              # kernel backend passed to every model (None = auto)
    "deterministic": False,       # torch.use_deterministic_algorithms(True)
    "model": {"name": "vim_micro", "kwargs": {},
              "pretrained": None,   # weights loaded exactly (ours, or an official release)
              "finetune": None},    # release to fine-tune from (head dropped, pos_embed resampled); none: scratch
    "teacher": {"name": None, "kwargs": {}, "checkpoint": None},
    "data": {
        "dataset": "synthetic",   # synthetic | cub | cars | aircraft | dogs | pets | flowers |
                                  # indoor67 | stanford40 | folder | sr_folder | photos
        "root": None,
        "lr_root": None,          # sr_folder: read LR images from here (default: the LR folder next to
                                  # root in a known layout, else LR made by MATLAB bicubic)
        "test_sets": [],          # SR evaluation: test set folders (Set5/ with HR/ + LR_bicubic/X4/,
                                  # GTmod12/ + LRbicx4/, DIV2K_valid_HR, or plain HR folders)
        "cache": "none",          # SR: memory = decode every image once, cut patches from memory
        "num_classes": 10,        # synthetic only
        "train_size": 512,        # synthetic: images per split; photos: training patches per epoch
        "val_size": 256,
        "img_size": 64,           # HR crop size (224 in the papers)
        "lr_size": 16,            # LR size of the same crop (56 in ViMD)
        "scale": 4,               # SR upscale factor
        "patch_size": 64,         # SR training HR patch size
        "views": "hr",            # hr | lr | hr_lr : which views the classification loader yields
        "batch_size": 16,
        "eval_batch_size": 64,
        "num_workers": 0,
        "scale_min": 0.35,        # RandomResizedCrop scale range
        "hflip": True,
        "check": True,            # before training, decode every image file (true / full), read
                                  # only its header (headers), or not (false); cached
    },
    "distill": {},                # the methods' keys (Task.config)
    "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "momentum": 0.9,
              "betas": [0.9, 0.999], "clip_grad": 5.0},
    "sched": {"name": "cosine", "warmup_epochs": 1.0, "warmup_lr": 1e-6, "min_lr": 1e-6,
              "warmup_iters": None,  # warm-up in iterations (overrides warmup_epochs)
              "milestones": [],      # step schedule: in epochs, or in iterations with train.iterations
              "gamma": 0.5},
    "train": {
        "epochs": 10,
        "iterations": None,       # run length in optimiser steps (the SR recipes); replaces epochs:
                                  # eval_every / ckpt_every and sched.milestones then count iterations
        "device": "auto",         # auto (cuda when available, else cpu) | cpu | cuda | cuda:i
        "steps_per_epoch": None,  # None: one pass over the data; dfkd: required
        "amp": "none",            # none | bf16
        "ema": 0.0,               # EMA decay (0 = off); evaluation then uses the EMA weights
        "ckpt_every": 0,          # also checkpoint every N steps (0 = only at epoch ends)
        "eval_every": 1,          # evaluate (one summary row) every N epochs, or N iterations
        "progress": True,
    },
}

FREE_FORM = {("model", "kwargs"), ("teacher", "kwargs")}


def _declare(into: dict, keys: dict, owner: str, path: tuple = ()) -> None:
    """Add a method's declared keys; a key two methods declare must have one default."""
    for k, v in keys.items():
        key = path + (k,)
        if isinstance(v, dict) and key not in FREE_FORM:
            _declare(into.setdefault(k, {}), v, owner, key)
        elif k in into and into[k] != v:
            raise ValueError(f"task {owner!r} declares config key '{'.'.join(key)}' with default {v!r}, "
                             f"another declares {into[k]!r}")
        else:
            into[k] = copy.deepcopy(v)


def defaults() -> dict[str, Any]:
    """BASE with every registered method's config keys."""
    out = copy.deepcopy(BASE)
    for name, cls in TASKS.items():
        _declare(out, cls.config, name)
    return out


def _merge(base: dict, new: dict, where: str, path: tuple = ()) -> dict:
    out = copy.deepcopy(base)
    for k, v in new.items():
        key = path + (k,)
        if k not in base:
            raise UserError(f"unknown config key '{'.'.join(map(str, key))}' in {where}")
        if key in FREE_FORM:
            if v is not None and not isinstance(v, dict):
                raise UserError(f"config key '{'.'.join(key)}' in {where} must be a mapping")
            out[k] = dict(v or {})
        elif isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise UserError(f"config key '{'.'.join(key)}' in {where} must be a mapping, got {v!r}")
            out[k] = _merge(base[k], v, where, key)
        else:
            out[k] = _number(v) if isinstance(base[k], (int, float)) or base[k] is None else v
    return out


def _number(v):
    """PyYAML reads '5e-3' (no dot) as a string: accept it where a number is expected."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _split_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value); the value is parsed as YAML (numbers, lists, null...)."""
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _nest(parts: list[str], value) -> dict:
    for p in reversed(parts):
        value = {p: value}
    return value


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> nested dict {"a": {"b": {"c": value}}}."""
    return _nest(*_split_override(text))


def apply_override(cfg: dict, text: str) -> dict:
    """``cfg`` with one override applied. The override sets the value at its dotted key and nothing
    else: ``model.kwargs.img_size=32`` changes one model argument and keeps the others, while
    ``model.kwargs={...}`` replaces the whole mapping."""
    parts, value = _split_override(text)
    where = f"override '{text}'"
    for i in range(1, len(parts)):
        if tuple(parts[:i]) in FREE_FORM:  # a leaf inside a free-form mapping: merge it in
            section = cfg
            for p in parts[:i]:
                section = section[p]
            section = node = copy.deepcopy(section or {})
            for p in parts[i:-1]:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise UserError(f"{where}: '{p}' in '{'.'.join(parts[:i])}' is not a mapping")
            node[parts[-1]] = value
            parts, value = parts[:i], section
            break
    return _merge(cfg, _nest(parts, value), where)


def _yaml_error(path: str, text: str, e: yaml.YAMLError) -> UserError:
    """File, line and column of a YAML syntax error, with the offending lines and a caret."""
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return UserError(f"invalid YAML in {path}: {str(e).splitlines()[0]}")
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    ctx, ctx_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if ctx:
        at = f" (line {ctx_mark.line + 1}, column {ctx_mark.column + 1})" if ctx_mark is not None else ""
        what = f"{ctx}{at}: {what}"
    lines = text.splitlines()
    first = ctx_mark.line if ctx_mark is not None and 0 <= mark.line - ctx_mark.line <= 3 else mark.line
    width = len(str(mark.line + 1))
    shown = [f"  {n + 1:>{width}} | {lines[n]}" for n in range(first, min(mark.line + 1, len(lines)))]
    shown.append(f"  {'':>{width}} | {' ' * mark.column}^")
    return UserError(f"invalid YAML in {path}, line {mark.line + 1}, column {mark.column + 1}: {what}\n"
                     + "\n".join(shown))


def load_config(path: str | None = None, overrides: list[str] | tuple = ()) -> dict:
    """Defaults <- YAML file (if any) <- overrides; validated; returns a plain nested dict."""
    cfg = defaults()
    if path is not None:
        path = resolve_config_path(path)  # a file, or the name of a packaged config
        with open(path) as f:
            text = f.read()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise _yaml_error(path, text, e) from None
        if not isinstance(data, dict):
            raise UserError(f"config {path} must be a mapping at the top level")
        cfg = _merge(cfg, data, path)
        if cfg["name"] is None:
            cfg["name"] = os.path.splitext(os.path.basename(path))[0]
    for ov in overrides:
        cfg = apply_override(cfg, ov)
    if cfg["name"] is None:
        cfg["name"] = cfg["task"]
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    """Value checks that do not need the models or data; each method checks its own keys."""
    task_class(cfg["task"])
    d, o, s, t = cfg["data"], cfg["optim"], cfg["sched"], cfg["train"]
    for k in ("batch_size", "eval_batch_size", "img_size", "lr_size", "scale", "num_classes"):
        _check(isinstance(d[k], int) and d[k] > 0, f"config 'data.{k}' must be a positive integer, got {d[k]!r}")
    _check(isinstance(d["num_workers"], int) and d["num_workers"] >= 0, "config 'data.num_workers' must be >= 0")
    _one_of(d["views"], ("hr", "lr", "hr_lr"), "data.views")
    _one_of(d["cache"], CACHES, "data.cache")
    _check(isinstance(o["lr"], (int, float)) and o["lr"] > 0, f"config 'optim.lr' must be a positive number, got {o['lr']!r}")
    _one_of(o["name"], OPTIMIZERS, "optim.name")
    _one_of(s["name"], SCHEDULES, "sched.name")
    _check(isinstance(t["epochs"], int) and t["epochs"] > 0, f"config 'train.epochs' must be a positive integer, got {t['epochs']!r}")
    _one_of(t["amp"], ("none", "bf16"), "train.amp")
    _check(device_spec_ok(t["device"]), f"config 'train.device' must be {DEVICES}, got {t['device']!r}")
    ft = cfg["model"]["finetune"]
    _check(ft is None or isinstance(ft, str), f"config 'model.finetune' must be a file path or none, got {ft!r}")
    _check(d["check"] is False or d["check"] in MODES,
           f"config 'data.check' must be full (or true), headers or false, got {d['check']!r}")
    _check(isinstance(t["ema"], (int, float)) and 0 <= t["ema"] < 1, "config 'train.ema' must be in [0, 1)")
    _check(isinstance(t["ckpt_every"], int) and t["ckpt_every"] >= 0, "config 'train.ckpt_every' must be >= 0")
    its = t["iterations"]
    _check(its is None or (isinstance(its, int) and its > 0), f"config 'train.iterations' must be a positive integer or null, got {its!r}")
    _check(isinstance(t["eval_every"], int) and t["eval_every"] > 0, "config 'train.eval_every' must be a positive integer")
    wi = s["warmup_iters"]
    _check(wi is None or (isinstance(wi, int) and wi >= 0), f"config 'sched.warmup_iters' must be an integer >= 0 or null, got {wi!r}")
    ms = s["milestones"]
    unit, key, length = ("iterations", "train.iterations", its) if its else ("epochs", "train.epochs", t["epochs"])
    _check(isinstance(ms, list) and all(isinstance(m, int) and 0 < m for m in ms) and ms == sorted(ms),
           f"config 'sched.milestones' must be an increasing list of positive integers, got {ms!r}")
    _check(not ms or ms[-1] <= length,
           f"config 'sched.milestones' count {unit} and must not pass {key} ({length}), got {ms!r}")
    spe = t["steps_per_epoch"]
    _check(spe is None or (isinstance(spe, int) and spe > 0), "config 'train.steps_per_epoch' must be a positive integer or null")
    for cls in TASKS.values():
        cls.check_config(cfg)


def dump_config(cfg: dict, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
