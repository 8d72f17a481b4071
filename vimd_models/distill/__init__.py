"""Distillation: losses (registry), DFKD-FGVC modules, and one task object per training method."""
from .losses import LOSSES, hidden_state_mse, kd_kl, nt_xent
from .tasks import Task, build_task

__all__ = ["LOSSES", "kd_kl", "hidden_state_mse", "nt_xent", "Task", "build_task"]
