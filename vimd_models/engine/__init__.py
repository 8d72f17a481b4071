"""Training / evaluation engine: one loop for every task, checkpoints, metrics, logging.

Python API (the same as the ``vimd`` command): ``load_config(path, overrides)``, ``train(cfg,
resume=None, on_step_end=())`` (or ``Trainer(cfg).fit()``), ``evaluate(model, kind, datasets, cfg)``,
``run_demo(out)``.
"""
from ..errors import UserError
from .config import load_config
from .demo import run_demo
from .kinds import KINDS, build_data, evaluate
from .trainer import Trainer, train

__all__ = ["UserError", "load_config", "train", "Trainer", "evaluate", "build_data", "KINDS", "run_demo"]
