"""Triton depthwise causal conv1d (the "triton" backend): forward and backward, no atomics.

One program per (time tile of BT steps, block of BD channels, batch row); the width-W window is W
shifted loads of the same (BD, BT) tile (served by the cache).  ``reverse=True`` maps scan step p to
address L-1-p, so the anti-causal conv needs no flip copies.  Backward: with SiLU a first kernel
recomputes the pre-activation and writes d(pre) once; the second computes dx and per-tile partials of
dweight/dbias, summed over (tile, batch) in a fixed order afterwards (bitwise reproducible).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities
from ..triton_utils import compute_dtype, pow2, rows

# Test hooks: force the tiling (None = heuristic).
TUNE: dict = {"block_d": None, "block_t": None, "warps": None}
# x may be a channel slice of a bigger tensor (any batch stride): the mixer passes xz[:, :d] as is.
CAPS = Capabilities(dtypes=FLOAT_DTYPES, deterministic=True, row_views=True)


@triton.jit
def _addr(q, L, REVERSE: tl.constexpr):
    if REVERSE:
        return L - 1 - q
    else:
        return q


@triton.jit
def _preact(x_ptr, w_ptr, b_ptr, xrow, offs_d, d_mask, p, L, W: tl.constexpr,
            HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
            CT: tl.constexpr):
    acc = tl.zeros((BD, BT), dtype=CT)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=d_mask, other=0.0).to(CT)[:, None]
    for k in tl.static_range(W):
        q = p - (W - 1) + k
        m = d_mask[:, None] & ((q >= 0) & (q < L))[None, :]
        xv = tl.load(x_ptr + xrow[:, None] + _addr(q, L, REVERSE)[None, :], mask=m, other=0.0)
        wk = tl.load(w_ptr + offs_d * W + k, mask=d_mask, other=0.0).to(CT)
        acc += wk[:, None] * xv.to(CT)
    return acc


@triton.jit
def _tile(p0, dim, L, xs, BD: tl.constexpr, BT: tl.constexpr):
    """A program's (BD channels, BT steps from p0) tile of batch row program_id(2): steps, channels,
    batch, channel mask, row offsets of the contiguous tensors and of x (batch stride xs: x may be
    a channel slice of a bigger tensor)."""
    p = p0 + tl.arange(0, BT)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    b = tl.program_id(2).to(tl.int64)
    row = (b * dim + offs_d).to(tl.int64) * L
    xrow = b * xs + offs_d.to(tl.int64) * L
    return p, offs_d, b, offs_d < dim, row, xrow


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, dim, L, xs, W: tl.constexpr,
                     HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
                     BD: tl.constexpr, BT: tl.constexpr, CT: tl.constexpr):
    p, offs_d, b, d_mask, row, xrow = _tile(tl.program_id(0) * BT, dim, L, xs, BD, BT)
    acc = _preact(x_ptr, w_ptr, b_ptr, xrow, offs_d, d_mask, p, L, W, HAS_BIAS, REVERSE, BD, BT, CT)
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    m = d_mask[:, None] & (p < L)[None, :]
    tl.store(out_ptr + row[:, None] + _addr(p, L, REVERSE)[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conv_dpre_kernel(x_ptr, w_ptr, b_ptr, dout_ptr, dpre_ptr, dim, L, xs, W: tl.constexpr,
                      HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr,
                      BD: tl.constexpr, BT: tl.constexpr, CT: tl.constexpr):
    """d(pre-activation) = dout * silu'(pre), pre recomputed."""
    p, offs_d, b, d_mask, row, xrow = _tile(tl.program_id(0) * BT, dim, L, xs, BD, BT)
    pre = _preact(x_ptr, w_ptr, b_ptr, xrow, offs_d, d_mask, p, L, W, HAS_BIAS, REVERSE, BD, BT, CT)
    m = d_mask[:, None] & (p < L)[None, :]
    ptrs = row[:, None] + _addr(p, L, REVERSE)[None, :]
    dout = tl.load(dout_ptr + ptrs, mask=m, other=0.0).to(CT)
    s = 1.0 / (1.0 + tl.exp(-pre))
    tl.store(dpre_ptr + ptrs, dout * s * (1.0 + pre * (1.0 - s)), mask=m)


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, dpre_ptr, dx_ptr, dw_ptr, db_ptr, batch, dim, L, xs,
                     W: tl.constexpr, REVERSE: tl.constexpr,
                     BD: tl.constexpr, BT: tl.constexpr, CT: tl.constexpr):
    """dx[p] = sum_k w[k] dpre[p + W-1-k]; partial dw[k] = sum_p dpre[p] x[p-(W-1)+k], db = sum dpre."""
    pid_t = tl.program_id(0)
    p, offs_d, b, d_mask, row, xrow = _tile(pid_t * BT, dim, L, xs, BD, BT)
    m = d_mask[:, None] & (p < L)[None, :]
    dpre = tl.load(dpre_ptr + row[:, None] + _addr(p, L, REVERSE)[None, :], mask=m, other=0.0).to(CT)
    dx = tl.zeros((BD, BT), dtype=CT)
    part = ((pid_t * batch + b) * dim + offs_d).to(tl.int64)
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * W + k, mask=d_mask, other=0.0).to(CT)
        q = p + (W - 1) - k
        mq = d_mask[:, None] & (q < L)[None, :]
        dq = tl.load(dpre_ptr + row[:, None] + _addr(q, L, REVERSE)[None, :], mask=mq, other=0.0)
        dx += wk[:, None] * dq.to(CT)
        r = p - (W - 1) + k
        mr = m & (r >= 0)[None, :]
        xr = tl.load(x_ptr + xrow[:, None] + _addr(r, L, REVERSE)[None, :], mask=mr, other=0.0)
        tl.store(dw_ptr + part * W + k, tl.sum(dpre * xr.to(CT), axis=1), mask=d_mask)
    tl.store(db_ptr + part, tl.sum(dpre, axis=1), mask=d_mask)
    tl.store(dx_ptr + row[:, None] + _addr(p, L, REVERSE)[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=m)


def _blocks(x: Tensor) -> tuple[int, int, tuple]:
    batch, dim, L = x.shape
    BT = TUNE["block_t"] or min(256, pow2(L, 2))
    BD = TUNE["block_d"] or min(pow2(dim), max(1, 2048 // BT))
    return BD, BT, (triton.cdiv(L, BT), triton.cdiv(dim, BD), batch)


def _warps(BD: int, BT: int) -> int:
    """8 warps for full (2048-element) tiles: 8 elements per thread, so the W shifted windows
    stay in registers at every width (4 warps needed up to 242 registers at W = 7-8, sm_90)."""
    return TUNE["warps"] or (8 if BD * BT >= 2048 else 4)


def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, reverse: bool) -> Tensor:
    batch, dim, L = x.shape
    BD, BT, grid = _blocks(x)
    x, xs = rows(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _conv_fwd_kernel[grid](x, weight, bias, out, dim, L, xs, W=weight.shape[1], HAS_BIAS=bias is not None,
                           SILU=bool(silu), REVERSE=bool(reverse), BD=BD, BT=BT,
                           CT=compute_dtype(x)[1], num_warps=_warps(BD, BT))
    return out


def backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], dout: Tensor, silu: bool,
             reverse: bool):
    batch, dim, L = x.shape
    W = weight.shape[1]
    BD, BT, grid = _blocks(x)
    ct, tl_ct = compute_dtype(x)
    x, xs = rows(x)
    dpre = dout
    if silu:
        dpre = torch.empty(x.shape, dtype=ct, device=x.device)
        _conv_dpre_kernel[grid](x, weight, bias, dout, dpre, dim, L, xs, W=W, HAS_BIAS=bias is not None,
                                REVERSE=bool(reverse), BD=BD, BT=BT, CT=tl_ct, num_warps=_warps(BD, BT))
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dw_part = torch.empty((grid[0], batch, dim, W), dtype=ct, device=x.device)
    db_part = torch.empty((grid[0], batch, dim), dtype=ct, device=x.device)
    _conv_bwd_kernel[grid](x, weight, dpre, dx, dw_part, db_part, batch, dim, L, xs, W=W,
                           REVERSE=bool(reverse), BD=BD, BT=BT, CT=tl_ct, num_warps=_warps(BD, BT))
    dw = dw_part.sum(dim=(0, 1)).to(weight.dtype)
    db = db_part.sum(dim=(0, 1)).to(bias.dtype) if bias is not None else None
    return dx, dw, db
