"""Triton depthwise causal conv1d (the "triton" backend): forward and backward, no atomics.

One program per (tile of steps, block of BLOCK_D channels, batch row).  A program loads its
(BLOCK_D, BLOCK_T) tile of x once: the steps it computes plus the width-1 steps before them (the
halo), and applies the taps from registers (``tl.gather`` of the tile shifted by each tap), so each
input element is read once (the halo once more, by the neighbouring tile).  ``reverse=True`` maps
step q to address L-1-q, so the anti-causal conv needs no flip copies.

Backward, one kernel: the tile also carries width-1 steps after the ones it owns, so the
pre-activation (for SiLU), d(pre) = dout * silu'(pre) and dx[p] = sum_k w[k] d(pre)[p + W-1-k] all
come from the one tile.  dweight / dbias are summed over the owned steps per program and the
per-program partials summed over (tile, batch) in a fixed order afterwards (bitwise reproducible).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities
from ..triton_utils import FP_FUSION, compute_dtype, pow2, rows

# x may be a channel slice of a bigger tensor (any batch stride): the mixer passes xz[:, :d] as is.
CAPS = Capabilities(dtypes=FLOAT_DTYPES, deterministic=True, row_views=True)


@dataclass(frozen=True)
class LaunchConfig:
    block_d: int  # channels per program, a power of two
    block_t: int  # steps per tile, halos included, a power of two (shrinks to fit L)
    warps: int


# The launch configuration of each kernel; TUNE overrides single fields (tests, tools/gpu/tune_triton).
CONFIGS = {
    "fwd": LaunchConfig(block_d=8, block_t=256, warps=8),
    "bwd": LaunchConfig(block_d=8, block_t=256, warps=8),
}
TUNE: dict = {"block_d": None, "block_t": None, "warps": None}


@triton.jit
def _addr(q, L, REVERSE: tl.constexpr):
    if REVERSE:
        return L - 1 - q
    else:
        return q


@triton.jit
def _tile(q0, dim, L, xs, REVERSE: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr):
    """A program's tile: BT steps q0.. of BD channels of batch row program_id(2).  Returns the
    column index j (BD, BT), the steps' offsets in a contiguous (batch, dim, L) tensor and in x
    (batch stride xs: x may be a channel slice of a bigger tensor), the in-range mask, channels."""
    j = tl.arange(0, BT)
    q = q0 + j
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    d_mask = offs_d < dim
    b = tl.program_id(2).to(tl.int64)
    a = _addr(q, L, REVERSE)[None, :]
    row = (b * dim + offs_d).to(tl.int64)[:, None] * L + a
    xrow = b * xs + offs_d.to(tl.int64)[:, None] * L + a
    m = d_mask[:, None] & ((q >= 0) & (q < L))[None, :]
    return tl.broadcast_to(j[None, :], (BD, BT)), row, xrow, m, offs_d, d_mask


@triton.jit
def _preact(x, w_ptr, b_ptr, j, offs_d, d_mask, W: tl.constexpr, HAS_BIAS: tl.constexpr,
            BD: tl.constexpr, BT: tl.constexpr, CT: tl.constexpr):
    """bias + sum_k w[k] x[j - (W-1) + k] from the tile in registers (valid for j >= W-1)."""
    acc = tl.zeros((BD, BT), dtype=CT)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=d_mask, other=0.0).to(CT)[:, None]
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * W + k, mask=d_mask, other=0.0).to(CT)
        acc += wk[:, None] * tl.gather(x, tl.maximum(j - (W - 1 - k), 0), axis=1)
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, dim, L, xs, W: tl.constexpr,
                     HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
                     BD: tl.constexpr, BT: tl.constexpr, CT: tl.constexpr):
    # the tile: W-1 halo steps, then the BT-(W-1) steps the program computes
    j, row, xrow, m, offs_d, d_mask = _tile(tl.program_id(0) * (BT - (W - 1)) - (W - 1), dim, L, xs,
                                            REVERSE, BD, BT)
    x = tl.load(x_ptr + xrow, mask=m, other=0.0).to(CT)
    acc = _preact(x, w_ptr, b_ptr, j, offs_d, d_mask, W, HAS_BIAS, BD, BT, CT)
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    tl.store(out_ptr + row, acc.to(out_ptr.dtype.element_ty), mask=m & (j >= W - 1))


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, dout_ptr, dx_ptr, dw_ptr, db_ptr, batch, dim, L, xs,
                     W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                     REVERSE: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, CT: tl.constexpr):
    """Owned steps: tile columns W-1 .. BT-W.  dx[p] = sum_k w[k] dpre[p + W-1-k];
    partial dw[k] = sum_p dpre[p] x[p-(W-1)+k], db = sum_p dpre[p], over the owned p."""
    pid_t = tl.program_id(0)
    j, row, xrow, m, offs_d, d_mask = _tile(pid_t * (BT - 2 * (W - 1)) - (W - 1), dim, L, xs,
                                            REVERSE, BD, BT)
    x = tl.load(x_ptr + xrow, mask=m, other=0.0).to(CT)
    after = m & (j >= W - 1)  # the owned steps and the W-1 after them
    dpre = tl.load(dout_ptr + row, mask=after, other=0.0).to(CT)
    if SILU:
        pre = _preact(x, w_ptr, b_ptr, j, offs_d, d_mask, W, HAS_BIAS, BD, BT, CT)
        s = 1.0 / (1.0 + tl.exp(-pre))
        dpre = tl.where(after, dpre * s * (1.0 + pre * (1.0 - s)), 0.0)
    owned = m & (j >= W - 1) & (j < BT - (W - 1))
    dx = tl.zeros((BD, BT), dtype=CT)
    part = ((pid_t * batch + tl.program_id(2)) * dim + offs_d).to(tl.int64)
    g = tl.where(owned, dpre, 0.0)
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * W + k, mask=d_mask, other=0.0).to(CT)
        dx += wk[:, None] * tl.gather(dpre, tl.minimum(j + (W - 1 - k), BT - 1), axis=1)
        xk = tl.gather(x, tl.maximum(j - (W - 1 - k), 0), axis=1)
        tl.store(dw_ptr + part * W + k, tl.sum(g * xk, axis=1), mask=d_mask)
    tl.store(db_ptr + part, tl.sum(g, axis=1), mask=d_mask)
    tl.store(dx_ptr + row, dx.to(dx_ptr.dtype.element_ty), mask=owned)


def _launch(x: Tensor, W: int, which: str) -> tuple[dict, tuple]:
    """Constexprs and launch options, and the grid, of ``which`` kernel."""
    batch, dim, L = x.shape
    cfg = CONFIGS[which]
    halo = (W - 1) * (2 if which == "bwd" else 1)
    BT = min(TUNE["block_t"] or cfg.block_t, pow2(L + halo))
    BT = max(BT, pow2(halo + 1))  # a tile owns at least one step
    BD = min(TUNE["block_d"] or cfg.block_d, pow2(dim))
    meta = dict(W=W, BD=BD, BT=BT, CT=compute_dtype(x)[1], num_warps=TUNE["warps"] or cfg.warps,
                enable_fp_fusion=FP_FUSION)
    return meta, (triton.cdiv(L, BT - halo), triton.cdiv(dim, BD), batch)


def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, reverse: bool) -> Tensor:
    _, dim, L = x.shape
    meta, grid = _launch(x, weight.shape[1], "fwd")
    x, xs = rows(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _conv_fwd_kernel[grid](x, weight, bias, out, dim, L, xs, HAS_BIAS=bias is not None,
                           SILU=bool(silu), REVERSE=bool(reverse), **meta)
    return out


def backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], dout: Tensor, silu: bool,
             reverse: bool):
    batch, dim, L = x.shape
    W = weight.shape[1]
    meta, grid = _launch(x, W, "bwd")
    ct = compute_dtype(x)[0]
    x, xs = rows(x)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dw_part = torch.empty((grid[0], batch, dim, W), dtype=ct, device=x.device)
    db_part = torch.empty((grid[0], batch, dim), dtype=ct, device=x.device)
    _conv_bwd_kernel[grid](x, weight, bias, dout, dx, dw_part, db_part, batch, dim, L, xs,
                           HAS_BIAS=bias is not None, SILU=bool(silu), REVERSE=bool(reverse), **meta)
    dw = dw_part.sum(dim=(0, 1)).to(weight.dtype)
    db = db_part.sum(dim=(0, 1)).to(bias.dtype) if bias is not None else None
    return dx, dw, db
