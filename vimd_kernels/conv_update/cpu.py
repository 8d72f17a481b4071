"""The C++ CPU causal conv1d update (csrc/cpu/update.h, ``torch.ops.vimd.causal_conv1d_update_cpu``):
widths 2..8, shift register or circular buffer (cache_seqlens); conv_state is updated in place.
Same signature as ``reference.forward``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities
from ..native import bindings

CAPS = Capabilities(dtypes=FLOAT_DTYPES, max_width=bindings().cpu_conv_max_width)


def forward(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
            cache_seqlens: Optional[Tensor]) -> Tensor:
    return torch.ops.vimd.causal_conv1d_update_cpu(x, conv_state, weight, bias, bool(silu),
                                                   cache_seqlens)
