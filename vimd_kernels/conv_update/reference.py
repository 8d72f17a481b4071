"""Pure-PyTorch causal conv1d update (the decoding step of the depthwise causal conv1d): the oracle
for every backend of ``causal_conv1d_update``.

x (batch, dim, seqlen) holds the next inputs; conv_state (batch, dim, state_len >= width - 1) holds
the inputs before them and is updated in place. Without ``cache_seqlens`` it is a shift register:
the conv runs over cat(conv_state, x) and conv_state keeps its last state_len inputs. With
``cache_seqlens`` (batch,) it is a circular buffer: row b's previous width - 1 inputs are at
(cache_seqlens[b] - width + 1 .. cache_seqlens[b] - 1) mod state_len, and x[:, :, t] is written at
(cache_seqlens[b] + t) mod state_len (a later input wins where seqlen > state_len).

out[t] = act(bias + sum_k weight[k] * x_ext[t + k]) over x_ext = (the width - 1 previous inputs, x);
math in float32 (float64 for float64 x), out in x's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities

CAPS = Capabilities(dtypes=FLOAT_DTYPES)


def _columns(start: Tensor, n: int, state_len: int, dim: int) -> Tensor:
    """(batch, dim, n) indices (start[b] + j) mod state_len, j = 0 .. n-1."""
    idx = torch.remainder(start[:, None].long() + torch.arange(n, device=start.device), state_len)
    return idx[:, None, :].expand(-1, dim, -1)


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                             *, backend=None):
    """x (batch, dim) or (batch, dim, seqlen) -> out of the same shape; conv_state updated in place."""
    del backend
    if weight.dim() == 3:
        weight = weight.squeeze(1)
    squeeze = x.dim() == 2
    if squeeze:
        x = x.unsqueeze(-1)
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    _, dim, seqlen = x.shape
    width, state_len = weight.shape[1], conv_state.shape[-1]
    if cache_seqlens is None:
        prev = conv_state[..., state_len - (width - 1):].clone()
        conv_state.copy_(torch.cat([conv_state, x.to(conv_state.dtype)], dim=-1)[..., -state_len:])
    else:
        prev = conv_state.gather(2, _columns(cache_seqlens - (width - 1), width - 1, state_len, dim))
        keep = min(seqlen, state_len)  # the inputs that stay in the buffer
        cols = _columns(cache_seqlens + (seqlen - keep), keep, state_len, dim)
        conv_state.scatter_(2, cols, x[..., seqlen - keep:].to(conv_state.dtype))
    x_ext = torch.cat([prev.to(ct), x.to(ct)], dim=-1)
    out = F.conv1d(x_ext, weight.to(ct).unsqueeze(1), None if bias is None else bias.to(ct), groups=dim)
    if activation in ("silu", "swish"):
        out = F.silu(out)
    out = out.to(x.dtype)
    return out.squeeze(-1) if squeeze else out


def forward(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
            cache_seqlens: Optional[Tensor]) -> Tensor:
    with torch.no_grad():
        return causal_conv1d_update_ref(x, conv_state, weight, bias, "silu" if silu else None,
                                        cache_seqlens)
