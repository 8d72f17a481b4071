"""vimd_kernels: selective-scan and causal-conv1d kernels (ref, C++ CPU, Triton, CUDA) behind one API."""
from .causal_conv1d.reference import causal_conv1d_ref
from .conv_update.reference import causal_conv1d_update_ref
from .mamba_inner.reference import bimamba_v2_inner_ref, mamba_inner_ref
from .ops import (bimamba_v2_inner_fn, causal_conv1d_fn, causal_conv1d_update, mamba_inner_fn,
                  selective_scan_fn, selective_state_update)
from .registry import BACKENDS, available_backends
from .selective_scan.reference import selective_scan_ref
from .state_update.reference import selective_state_update_ref

__version__ = "0.1.0"

__all__ = [
    "selective_scan_fn", "selective_scan_ref", "causal_conv1d_fn", "causal_conv1d_ref",
    "mamba_inner_fn", "mamba_inner_ref", "bimamba_v2_inner_fn", "bimamba_v2_inner_ref",
    "selective_state_update", "selective_state_update_ref", "causal_conv1d_update",
    "causal_conv1d_update_ref", "available_backends", "BACKENDS", "__version__",
]

# Names of this package's earlier releases; hustvl/Vim's ``bimamba_inner_fn`` (a different
# signature: its "v1" mixer) is ``vimd_kernels.compat.selective_scan_interface.bimamba_inner_fn``.
_RENAMED = {"bimamba_inner_fn": "bimamba_v2_inner_fn", "bimamba_inner_ref": "bimamba_v2_inner_ref"}


def __getattr__(name: str):
    if name in _RENAMED:
        import warnings
        new = _RENAMED[name]
        warnings.warn(f"vimd_kernels.{name} is deprecated and will be removed in the next release: use "
                      f"vimd_kernels.{new} (hustvl/Vim's {name}: vimd_kernels.compat.selective_scan_interface)",
                      DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module 'vimd_kernels' has no attribute {name!r}")

