"""Pure-PyTorch depthwise causal conv1d: the oracle for every conv backend.

out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (width - 1) + k]), zero padded on the
left; ``reverse=True`` is flip(f(flip(x))) (anti-causal).  Math in float32 (float64 for float64).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_conv1d_ref(x, weight, bias=None, activation=None, *, reverse=False, backend=None):
    del backend
    if weight.dim() == 3:
        weight = weight.squeeze(1)
    dtype_in = x.dtype
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    if reverse:
        x = x.flip(-1)
    dim, width = weight.shape
    L = x.shape[-1]
    out = F.conv1d(x.to(ct), weight.to(ct).unsqueeze(1), None if bias is None else bias.to(ct),
                   padding=width - 1, groups=dim)[..., :L]
    if activation in ("silu", "swish"):
        out = F.silu(out)
    out = out.to(dtype_in)
    return out.flip(-1) if reverse else out


def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, reverse: bool) -> Tensor:
    with torch.no_grad():
        return causal_conv1d_ref(x, weight, bias, "silu" if silu else None, reverse=reverse)


def backward(x, weight, bias, dout, silu: bool, reverse: bool):
    act = "silu" if silu else None
    if bias is None:
        _, vjp = torch.func.vjp(lambda x_, w_: causal_conv1d_ref(x_, w_, None, act, reverse=reverse),
                                x, weight)
        return (*vjp(dout), None)
    _, vjp = torch.func.vjp(lambda x_, w_, b_: causal_conv1d_ref(x_, w_, b_, act, reverse=reverse),
                            x, weight, bias)
    return vjp(dout)
