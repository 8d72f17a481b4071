"""The C++ CPU selective scan (csrc/cpu, the ops ``torch.ops.vimd.selective_scan_{fwd,bwd}_cpu``):
float32/float16/bfloat16 with float32 math, float64 with float64 math; parallel over (batch,
channel) rows, states vectorised, deterministic gradients. Same signature as
``reference.forward``/``reference.backward``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities

CAPS = Capabilities(dtypes=FLOAT_DTYPES, deterministic=True)


def forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
            z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
            delta_softplus: bool, reverse: bool) -> tuple[Tensor, Tensor]:
    out, last_state = torch.ops.vimd.selective_scan_fwd_cpu(
        u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus), bool(reverse))
    return out, last_state


def backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
             delta_softplus: bool, reverse: bool):
    grads = torch.ops.vimd.selective_scan_bwd_cpu(u, delta, A, B, C, D, z, delta_bias, initial_state, dout,
                                                  dlast_state, bool(delta_softplus), bool(reverse))
    return tuple(grads)
