"""The C++ CPU selective state update (csrc/cpu/update.h,
``torch.ops.vimd.selective_state_update_cpu``): rows in parallel, the N states vectorised;
float32/float16/bfloat16 with float32 math, float64 with float64 math; the state is updated in
place. Same signature as ``reference.forward``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities

CAPS = Capabilities(dtypes=FLOAT_DTYPES)


def forward(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
            D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
            dt_softplus: bool) -> Tensor:
    return torch.ops.vimd.selective_state_update_cpu(state, x, dt, A, B, C, D, z, dt_bias,
                                                     bool(dt_softplus))
