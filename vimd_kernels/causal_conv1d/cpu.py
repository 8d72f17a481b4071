"""The C++ CPU depthwise causal conv1d (csrc/cpu, ``torch.ops.vimd.causal_conv1d_{fwd,bwd}_cpu``):
widths 2..8, optional bias and SiLU, reverse (anti-causal) without flips; deterministic weight
gradients. Same signature as ``reference``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities
from ..native import bindings

CAPS = Capabilities(dtypes=FLOAT_DTYPES, max_width=bindings().cpu_conv_max_width, deterministic=True)


def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, reverse: bool) -> Tensor:
    return torch.ops.vimd.causal_conv1d_fwd_cpu(x, weight, bias, bool(silu), bool(reverse))


def backward(x, weight, bias, dout, silu: bool, reverse: bool):
    dx, dweight, dbias = torch.ops.vimd.causal_conv1d_bwd_cpu(x, weight, bias, dout, bool(silu),
                                                              bool(reverse))
    return dx, dweight, dbias
