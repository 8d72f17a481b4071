"""Building blocks shared by the model families."""
from .drop import DropPath, drop_path
from .mamba import Mamba, no_weight_decay, set_backend
from .norm import RMSNorm, add_norm, rms_norm
from .patch import PatchEmbed
from .ss2d import SS2D, VSSBlock

__all__ = ["DropPath", "drop_path", "Mamba", "no_weight_decay", "set_backend", "RMSNorm", "add_norm",
           "rms_norm", "PatchEmbed", "SS2D", "VSSBlock"]
