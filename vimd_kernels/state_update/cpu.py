"""The C++ CPU selective state update (csrc/cpu/update.h): rows in parallel, the N states
vectorised; float32/float16/bfloat16 with float32 math, float64 with float64 math. Same signature
as ``reference.forward``.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from vimd_kernels import _C

from ..backend import FLOAT_DTYPES, Capabilities

CAPS = Capabilities(dtypes=FLOAT_DTYPES)


def forward(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
            D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
            dt_softplus: bool) -> Tensor:
    return _C.selective_state_update_cpu(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))
