"""Pure-PyTorch depthwise causal conv1d: the oracle for every conv backend.

out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (width - 1) + k]), zero padded on the
left; ``reverse=True`` is flip(f(flip(x))) (anti-causal).  Math in float32 (float64 for float64).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities

CAPS = Capabilities(dtypes=FLOAT_DTYPES, deterministic=True)


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
    """Hand-derived gradients (no torch.func inside a custom op, so opcheck/compile can trace it)."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc, g = x.to(ct), dout.to(ct)
    if reverse:
        xc, g = xc.flip(-1), g.flip(-1)
    dim, width = weight.shape
    L = x.shape[-1]
    w = weight.to(ct)
    if silu:  # d silu(p)/dp = s(p) * (1 + p * (1 - s(p))), with p the pre-activation
        pre = F.conv1d(xc, w.unsqueeze(1), None if bias is None else bias.to(ct),
                       padding=width - 1, groups=dim)[..., :L]
        s = torch.sigmoid(pre)
        g = g * s * (1 + pre * (1 - s))
    # dx[s] = sum_k w[k] g[s + width-1-k]: an anti-causal conv with the taps reversed.
    dx = F.conv1d(F.pad(g, (0, width - 1)), w.flip(-1).unsqueeze(1), groups=dim)
    xp = F.pad(xc, (width - 1, 0))  # xp[t + k] = x[t - (width-1) + k]
    dw = torch.stack([(g * xp[..., k:k + L]).sum(dim=(0, 2)) for k in range(width)], dim=1)
    db = g.sum(dim=(0, 2)) if bias is not None else None
    if reverse:
        dx = dx.flip(-1)
    return dx.to(x.dtype), dw.to(weight.dtype), (db.to(bias.dtype) if db is not None else None)
