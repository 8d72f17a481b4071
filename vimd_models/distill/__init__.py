"""What the distillation methods share: the losses (registry) and the DFKD-FGVC modules."""
from .losses import LOSSES, hidden_state_mse, kd_kl, nt_xent

__all__ = ["LOSSES", "kd_kl", "hidden_state_mse", "nt_xent"]
