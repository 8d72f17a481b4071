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

Launch configuration: ``launch_forward`` / ``launch_backward`` take a ``LaunchConfig`` (channels
per program, steps per tile, warps); the backend's entry points ``forward`` / ``backward`` launch
with ``CONFIGS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities
from ..triton_utils import FP_FUSION, compute_dtype, pow2, rows, step_addr

# x may be a channel slice of a bigger tensor (any batch stride): the mixer passes xz[:, :d] as is.
CAPS = Capabilities(dtypes=FLOAT_DTYPES, deterministic=True, row_views=True)


@dataclass(frozen=True)
class LaunchConfig:
    """How one forward or backward call launches its kernel (``launch_forward`` /
    ``launch_backward`` take one; ``CONFIGS`` holds the defaults, ``dataclasses.replace`` of one
    gives a variant)."""
    block_d: int  # channels per program, a power of two (shrinks to fit dim)
    block_t: int  # steps per tile, halos included, a power of two (shrinks to fit L, grows to
    # hold the halos and one step)
    warps: int

    def __post_init__(self):
        for name in ("block_d", "block_t", "warps"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"LaunchConfig.{name} must be a power of two, got {v}")


# The launch configuration of each kernel: "fwd" for launch_forward (the backend's forward),
# "bwd" for launch_backward (the backend's backward).
CONFIGS = {
    "fwd": LaunchConfig(block_d=8, block_t=256, warps=8),
    "bwd": LaunchConfig(block_d=8, block_t=256, warps=8),
}


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
    a = step_addr(q, L, REVERSE)[None, :]
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


def _launch(x: Tensor, W: int, halos: int, cfg: LaunchConfig) -> tuple[dict, tuple]:
    """Constexprs and launch options, and the grid, of a kernel whose tiles carry ``halos`` halos
    of W-1 steps (the forward one, the backward two), launched as ``cfg`` says."""
    batch, dim, L = x.shape
    halo = (W - 1) * halos
    BT = min(cfg.block_t, pow2(L + halo))
    BT = max(BT, pow2(halo + 1))  # a tile owns at least one step
    BD = min(cfg.block_d, pow2(dim))
    meta = dict(W=W, BD=BD, BT=BT, CT=compute_dtype(x)[1], num_warps=cfg.warps,
                enable_fp_fusion=FP_FUSION)
    return meta, (triton.cdiv(L, BT - halo), triton.cdiv(dim, BD), batch)


def launch_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, reverse: bool,
                   config: Optional[LaunchConfig] = None) -> Tensor:
    """The backend's forward with its kernel launched as ``config`` says (None: CONFIGS["fwd"])."""
    _, dim, L = x.shape
    meta, grid = _launch(x, weight.shape[1], 1, CONFIGS["fwd"] if config is None else config)
    x, xs = rows(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _conv_fwd_kernel[grid](x, weight, bias, out, dim, L, xs, HAS_BIAS=bias is not None,
                           SILU=bool(silu), REVERSE=bool(reverse), **meta)
    return out


def launch_backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], dout: Tensor, silu: bool,
                    reverse: bool, config: Optional[LaunchConfig] = None):
    """The backend's backward with its kernel launched as ``config`` says (None: CONFIGS["bwd"])."""
    batch, dim, L = x.shape
    W = weight.shape[1]
    meta, grid = _launch(x, W, 2, CONFIGS["bwd"] if config is None else config)
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


# ----------------------------------------------------------------------------- backend entry points

def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, reverse: bool) -> Tensor:
    return launch_forward(x, weight, bias, silu, reverse)


def backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], dout: Tensor, silu: bool,
             reverse: bool):
    return launch_backward(x, weight, bias, dout, silu, reverse)
