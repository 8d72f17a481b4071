"""Training / evaluation engine: one loop for every task, checkpoints, metrics, logging."""
from .errors import UserError

__all__ = ["UserError"]
