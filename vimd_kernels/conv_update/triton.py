"""Triton causal conv1d update (the "triton" backend): the conv of the next input(s) against the
conv state, which is then shifted (or, with cache_seqlens, overwritten as a circular buffer).

One program per (block of BD channels, batch row): the outputs are W shifted loads of x_ext =
(the width - 1 previous inputs, x); every read of conv_state comes before a barrier, every write
after it.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities
from ..triton_utils import compute_dtype, pow2

CAPS = Capabilities(dtypes=FLOAT_DTYPES)
TILE = 4096  # elements per program (BD x max(seqlen, state_len), padded to powers of two)


@triton.jit
def _mod(v, n):
    """v mod n in [0, n) for any sign of v (C's % truncates)."""
    return ((v % n) + n) % n


@triton.jit
def _conv_update_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, seqlens_ptr, out_ptr, dim, L, S,
                        W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                        CIRCULAR: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
                        BS: tl.constexpr, CT: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BD + tl.arange(0, BD)
    d_mask = offs_d < dim
    row = b * dim + offs_d
    x_row = row * L
    s_row = row * S
    if CIRCULAR:
        pos = tl.load(seqlens_ptr + b).to(tl.int64)
    else:
        pos = S  # the shift register's previous inputs are its last W - 1 slots
    t = tl.arange(0, BT)
    t_mask = t < L
    acc = tl.zeros((BD, BT), dtype=CT)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(CT)[:, None]
    for k in tl.static_range(W):
        i = t + k - (W - 1)  # step of x_ext relative to x: < 0 reads the state
        in_state = i < 0
        col = _mod(pos + i, S)
        m = d_mask[:, None] & t_mask[None, :]
        sv = tl.load(state_ptr + s_row[:, None] + col[None, :], mask=m & in_state[None, :], other=0.0)
        xv = tl.load(x_ptr + x_row[:, None] + i[None, :], mask=m & (i >= 0)[None, :], other=0.0)
        wk = tl.load(w_ptr + offs_d * W + k, mask=d_mask, other=0.0).to(CT)
        acc += wk[:, None] * tl.where(in_state[None, :], sv.to(CT), xv.to(CT))
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    tl.store(out_ptr + x_row[:, None] + t[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=d_mask[:, None] & t_mask[None, :])
    # The new state: slot j's source, read before any slot is written.
    j = tl.arange(0, BS)
    if CIRCULAR:
        src = L - 1 - _mod(pos + L - 1 - j, S)  # the last input written at slot j (< 0: none)
        keep = src >= 0
        from_x = keep
    else:
        src = L + j - S  # entry L + j of (state, x), as a step of x
        keep = j >= 0
        from_x = src >= 0
    jm = d_mask[:, None] & (j < S)[None, :]
    old = tl.load(state_ptr + s_row[:, None] + (src + S)[None, :],
                  mask=jm & (keep & (src < 0))[None, :], other=0.0)
    new = tl.load(x_ptr + x_row[:, None] + src[None, :], mask=jm & from_x[None, :], other=0.0)
    new = tl.where(from_x[None, :], new, old)
    tl.debug_barrier()
    tl.store(state_ptr + s_row[:, None] + j[None, :], new, mask=jm & keep[None, :])


def forward(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
            cache_seqlens: Optional[Tensor]) -> Tensor:
    batch, dim, L = x.shape
    S, W = conv_state.shape[2], weight.shape[1]
    _, tl_ct = compute_dtype(x)
    out = torch.empty_like(x)
    BT, BS = pow2(L), pow2(S)
    BD = min(pow2(dim), max(1, TILE // max(BT, BS)))
    grid = (triton.cdiv(dim, BD), batch)
    _conv_update_kernel[grid](x, conv_state, weight, bias, cache_seqlens, out, dim, L, S, W=W,
                              HAS_BIAS=bias is not None, SILU=bool(silu),
                              CIRCULAR=cache_seqlens is not None, BD=BD, BT=BT, BS=BS, CT=tl_ct,
                              num_warps=4)
    return out
