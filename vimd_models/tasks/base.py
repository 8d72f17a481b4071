"""What every training method shares: the Task contract, the registry, model and teacher building.

A task is an ``nn.Module`` holding the trained model (``self.model``), any frozen teacher and any
trainable auxiliary modules; ``forward(batch) -> (loss, {component: value})``. A method is one
module of this package: a Task subclass registered under its config name (``task: ...``) that
declares, as class attributes,

- ``config``: its own config keys with their defaults, merged by the config loader into the
  sections they belong to (``{"distill": {"alpha": 1.0}}`` adds ``distill.alpha``), and
  ``check_config(cfg)``: the value checks of those keys;
- ``kind``: "classify" / "sr": the data form, the evaluation and its metrics (engine.kinds);
- ``train_views`` / ``eval_views``: the classification views it trains and evaluates on;
- ``data_free``: no training set, the task makes its own inputs;
- ``ddp_ok``: False when the engine must average gradients itself (tasks with inner optimisers).

Work a method needs at the end of a run (after the final weights are written, on the first
process) registers with ``on_run_end``.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError
from ..factory import create_model
from ..weights import load

TASKS: dict[str, type[Task]] = {}

# (task, final model, run folder, inputs) -> None; ``inputs()`` yields training input batches on
# the model's device.
RunEndHook = Callable[["Task", nn.Module, str, Callable[[], Iterator[torch.Tensor]]], None]
RUN_END_HOOKS: list[RunEndHook] = []


def register_task(name: str):
    """Class decorator: ``TASKS[name] = cls``; ``name`` is the config's ``task`` value."""
    def deco(cls):
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered ({TASKS[name].__name__})")
        cls.name = name
        TASKS[name] = cls
        return cls
    return deco


def on_run_end(fn: RunEndHook) -> RunEndHook:
    """Decorator: call ``fn`` when a run of any task ends (see ``RunEndHook``)."""
    RUN_END_HOOKS.append(fn)
    return fn


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise UserError(f"config 'task': unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def build_task(cfg: dict, num_classes: int | None = None) -> Task:
    """The task named by ``cfg["task"]``; ``num_classes`` comes from the data (classification kinds)."""
    return task_class(cfg["task"])(cfg, num_classes)


def model_from_config(cfg: dict, key: str = "model", **extra) -> nn.Module:
    """``create_model`` from the config section ``key`` ({name, kwargs}) with the config's kernel
    backend; ``extra`` (from the data, e.g. num_classes) must agree with the section's kwargs.
    Config mistakes become UserErrors naming the key."""
    spec = cfg[key]
    given = spec.get("kwargs") or {}
    for k, v in extra.items():
        if k in given and given[k] != v:
            raise UserError(f"config '{key}.kwargs.{k}' = {given[k]!r} disagrees with the data ({v!r})")
    if not spec.get("name"):
        raise UserError(f"config '{key}.name' must name a registered model")
    try:
        return create_model(spec["name"], backend=cfg["backend"], **{**extra, **given})
    except (ValueError, TypeError) as e:
        raise UserError(f"config '{key}': {e}") from None


def freeze(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()


def load_teacher(cfg: dict, **extra) -> nn.Module:
    """The frozen teacher of ``cfg["teacher"]`` with its trained weights (``teacher.checkpoint``)."""
    t = cfg["teacher"]
    model = model_from_config(cfg, "teacher", **extra)
    if not t.get("checkpoint"):
        raise UserError(f"config 'teacher.checkpoint' must point to the trained {t['name']} weights")
    load(model, t["checkpoint"], what="config 'teacher.checkpoint'")
    return freeze(model)


def average_gradients(grads: Iterable[torch.Tensor | None]) -> None:
    """All-reduce and average gradients in place over the process group (a no-op without one):
    what DDP does, for the tasks that step their own optimisers and so cannot run under DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for g in grads:
        if g is not None:
            dist.all_reduce(g)
            g.div_(world)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise UserError(msg)


def one_of(value, choices, key: str) -> None:
    check(value in choices, f"config '{key}' must be one of {', '.join(choices)}, got {value!r}")


class Task(nn.Module):
    name = ""  # set by register_task
    config: dict = {}
    kind = "classify"
    train_views = "hr"
    eval_views = "hr"
    data_free = False
    ddp_ok = True

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """Value checks of the keys in ``config`` (raise UserError)."""

    @classmethod
    def views(cls, cfg: dict) -> tuple[str, str]:
        """(train view, evaluation view) of the classification loaders."""
        return cls.train_views, cls.eval_views

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.frozen: list[nn.Module] = []

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def extra_state(self) -> dict:
        """State outside the module's parameters and buffers (inner optimisers, counters) that a
        checkpoint must keep."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def batch_size(self, batch) -> int:
        return int(batch[0].shape[0])
