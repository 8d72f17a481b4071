"""CUDA backend of the depthwise causal conv1d: the kernels of csrc/cuda, ``torch.ops.vimd.*_cuda``.

Weights and bias go to the kernels in float32 (dim x width values); their gradients come back in
the dtype they were given. dweight/dbias are reduced in a fixed order (deterministic).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backend import Capabilities
from ..native import bindings
from ..native import ops as _ext  # the CUDA ops (a module global: the emulator tests replace it)

# x in float32, float16 or bfloat16 (float64: backend 'ref' or 'cpu'); x may be a channel slice of
# a bigger tensor (rows of L contiguous steps, any batch stride): the mixer passes xz[:, :d]
# without a copy (vimd_kernels/mamba_inner/fused.py).
CAPS = Capabilities(dtypes=(torch.float32, torch.float16, torch.bfloat16),
                    max_width=bindings().cuda_conv_max_width, deterministic=True, row_views=True)


def _f32(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, reverse: bool) -> Tensor:
    return _ext().causal_conv1d_fwd_cuda(x, _f32(weight), _f32(bias), bool(silu), bool(reverse))


def backward(x, weight, bias, dout, silu: bool, reverse: bool):
    dx, dweight, dbias = _ext().causal_conv1d_bwd_cuda(x, _f32(weight), _f32(bias), dout.contiguous(),
                                                       bool(silu), bool(reverse))
    return dx, dweight.to(weight.dtype), (dbias.to(bias.dtype) if bias is not None else None)


# Both directions in one launch (the mixer op's hook): weight (2, dim, width), bias (2, dim);
# direction 1 runs reversed. dout (2, batch, dim, L) may be one buffer expanded.

def bi_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool) -> Tensor:
    return _ext().causal_conv1d_bi_fwd_cuda(x, _f32(weight), _f32(bias), bool(silu))


def bi_backward(x, weight, bias, dout, silu: bool):
    dx, dweight, dbias = _ext().causal_conv1d_bi_bwd_cuda(x, _f32(weight), _f32(bias), dout[0].contiguous(),
                                                          dout[1].contiguous(), bool(silu))
    return dx, dweight.to(weight.dtype), (dbias.to(bias.dtype) if bias is not None else None)
