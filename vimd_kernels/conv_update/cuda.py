"""CUDA backend of the causal conv1d update: csrc/cuda/update.cuh,
``torch.ops.vimd.causal_conv1d_update_cuda``.

Weight and bias go to the kernel in float32; conv_state (x's dtype) is updated in place.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backend import Capabilities
from ..native import bindings
from ..native import ops as _ext  # the CUDA ops (a module global: the emulator tests replace it)

CAPS = Capabilities(dtypes=(torch.float32, torch.float16, torch.bfloat16),
                    max_width=bindings().cuda_conv_max_width)


def _f32(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def forward(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
            cache_seqlens: Optional[Tensor]) -> Tensor:
    return _ext().causal_conv1d_update_cuda(x, conv_state, _f32(weight), _f32(bias), bool(silu),
                                            cache_seqlens)
