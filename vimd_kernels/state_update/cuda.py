"""CUDA backend of the selective state update: csrc/cuda/update.cuh,
``torch.ops.vimd.selective_state_update_cuda``.

A, B, C, D and dt_bias go to the kernel in float32 (B/C as (batch, G, N)); the state keeps its own
dtype (float32, float16 or bfloat16) and is updated in place.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backend import Capabilities
from ..native import ops as _ext  # the CUDA ops (a module global: the emulator tests replace it)

CAPS = Capabilities(dtypes=(torch.float32, torch.float16, torch.bfloat16))


def _f32(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def _grouped(X: Tensor) -> Tensor:
    return _f32(X[:, None] if X.dim() == 2 else X)


def forward(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
            D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
            dt_softplus: bool) -> Tensor:
    return _ext().selective_state_update_cuda(state, x, dt, _f32(A), _grouped(B), _grouped(C), _f32(D), z,
                                              _f32(dt_bias), bool(dt_softplus))
