"""Training / evaluation engine: one loop for every task, checkpoints, metrics, logging.

Python API (the same as the ``vimd`` command): ``load_config(path, overrides)``, ``train(cfg,
resume=None)``, ``evaluate(model, kind, datasets, cfg)``, ``run_demo(out)``.
"""
from .errors import UserError

_LAZY = {"load_config": ".config", "train": ".trainer", "evaluate": ".trainer", "run_demo": ".demo"}


def __getattr__(name):  # lazy: the data / distill packages import engine.errors
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)


__all__ = ["UserError", "load_config", "train", "evaluate", "run_demo"]
