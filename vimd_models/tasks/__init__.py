"""Training methods: one module per method, registered on import (see ``base`` for the contract).

Adding a method is one new module here (a registered Task subclass declaring its config keys)
and its import line below; the engine, the config loader and the CLI name no method.
"""
from . import supervised, dvmsr_kd, vimd, dfkd  # noqa: F401,I001  (register the methods, in this order)
from .base import (RUN_END_HOOKS, TASKS, Task, average_gradients, build_task, freeze, load_teacher,
                   model_from_config, on_run_end, register_task, task_class)

__all__ = ["TASKS", "Task", "register_task", "task_class", "build_task", "model_from_config", "load_teacher",
           "freeze", "average_gradients", "on_run_end", "RUN_END_HOOKS"]
