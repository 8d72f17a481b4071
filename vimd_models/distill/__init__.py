"""Distillation: losses (registry), DFKD-FGVC modules, and one task object per training method."""
from .losses import LOSSES, hidden_state_mse, kd_kl, nt_xent
from .tasks import TASKS, Task, build_task, register_task, task_class

__all__ = ["LOSSES", "kd_kl", "hidden_state_mse", "nt_xent", "TASKS", "Task", "build_task", "register_task",
           "task_class"]
