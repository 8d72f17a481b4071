"""CUDA backend of the causal conv1d update: csrc/cuda/update.cuh,
``torch.ops.vimd.causal_conv1d_update_cuda``.

Weight and bias go to the kernel in float32; conv_state (x's dtype) is updated in place.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vimd_kernels import _C

from ..backend import Capabilities

CAPS = Capabilities(dtypes=(torch.float32, torch.float16, torch.bfloat16),
                    max_width=_C.cuda_conv_max_width)


def _ext():
    """The CUDA ops (torch.ops.vimd.*_cuda, registered by the library the bindings link)."""
    return torch.ops.vimd


def _f32(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def forward(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
            cache_seqlens: Optional[Tensor]) -> Tensor:
    return _ext().causal_conv1d_update_cuda(x, conv_state, _f32(weight), _f32(bias), bool(silu),
                                            cache_seqlens)
