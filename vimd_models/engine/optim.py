"""Optimisers, the learning-rate schedule (linear warm-up + cosine / step), and EMA of weights."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import param_groups


# optim.name -> (parameter groups, optim config) -> optimiser
OPTIMIZERS = {
    "adamw": lambda groups, o: torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"])),
    "adam": lambda groups, o: torch.optim.Adam(groups, lr=o["lr"], betas=tuple(o["betas"])),
    "sgd": lambda groups, o: torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=False),
}


def build_optimizer(module: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    o = cfg["optim"]
    groups = [g for g in param_groups(module, float(o["weight_decay"])) if g["params"]]
    if not groups:
        raise ValueError("the task has no trainable parameters")
    return OPTIMIZERS[o["name"]](groups, o)


def _cosine(step: int, base: float, warm: int, total_steps: int, unit: int, s: dict) -> float:
    t = (step - warm) / max(1, total_steps - warm)
    return float(s["min_lr"]) + 0.5 * (base - float(s["min_lr"])) * (1 + math.cos(math.pi * min(1.0, t)))


def _step(step: int, base: float, warm: int, total_steps: int, unit: int, s: dict) -> float:
    done = step // max(1, unit)  # epochs (or iterations) completed
    return base * float(s["gamma"]) ** sum(done >= m for m in s["milestones"])


def _constant(step: int, base: float, warm: int, total_steps: int, unit: int, s: dict) -> float:
    return base


# sched.name -> the learning rate after warm-up:
# (step, base lr, warm-up steps, total steps, steps per milestone unit, sched config) -> lr
SCHEDULES = {"cosine": _cosine, "step": _step, "none": _constant}


def lr_at(step: int, total_steps: int, steps_per_epoch: int, cfg: dict) -> float:
    """Learning rate at a global step (the schedule moves every step): linear warm-up from
    warmup_lr, then the schedule (cosine to min_lr, step decay or constant). Warm-up lasts
    sched.warmup_iters steps when set, else sched.warmup_epochs epochs; step milestones count
    iterations when train.iterations is set, else epochs."""
    o, s = cfg["optim"], cfg["sched"]
    base = float(o["lr"])
    if s["warmup_iters"] is not None:
        warm = int(s["warmup_iters"])
    else:
        warm = int(round(float(s["warmup_epochs"]) * steps_per_epoch))
    if step < warm:
        return float(s["warmup_lr"]) + (base - float(s["warmup_lr"])) * step / warm
    unit = 1 if cfg["train"]["iterations"] else steps_per_epoch
    return SCHEDULES[s["name"]](step, base, warm, total_steps, unit, s)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


class EMA:
    """Exponential moving average of a module's floating-point state (parameters and buffers)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, v in module.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                s.copy_(v)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, sd: dict) -> None:
        for k in self.shadow:
            self.shadow[k].copy_(sd[k])
