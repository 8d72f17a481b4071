"""Triton selective state update (the "triton" backend): one decoding step of the selective scan.

One program per (block of BD channels, batch row) holds the (BD, N) tile of the state in registers:
h = exp(dt A) h + dt B x is written back in the state's dtype, out = (<h, C> + D x) silu(z).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities
from ..triton_utils import compute_dtype, pow2, softplus

CAPS = Capabilities(dtypes=FLOAT_DTYPES)
TILE = 4096  # state elements per program (BD x BN)


@triton.jit
def _state_update_kernel(state_ptr, x_ptr, dt_ptr, dt_bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr,
                         out_ptr, dim, N, groups_b, groups_c,
                         HAS_DT_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                         SOFTPLUS: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
                         CT: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    d_mask = offs_d < dim
    m = d_mask[:, None] & (offs_n < N)[None, :]
    row = b * dim + offs_d
    x = tl.load(x_ptr + row, mask=d_mask, other=0.0).to(CT)
    dt = tl.load(dt_ptr + row, mask=d_mask, other=0.0).to(CT)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + offs_d, mask=d_mask, other=0.0).to(CT)
    if SOFTPLUS:
        dt = softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=m, other=0.0).to(CT)
    b_row = b * groups_b + offs_d // (dim // groups_b)  # channel d reads group d // (dim / G)
    c_row = b * groups_c + offs_d // (dim // groups_c)
    Bv = tl.load(B_ptr + b_row[:, None] * N + offs_n[None, :], mask=m, other=0.0).to(CT)
    Cv = tl.load(C_ptr + c_row[:, None] * N + offs_n[None, :], mask=m, other=0.0).to(CT)
    s_ptrs = state_ptr + row[:, None] * N + offs_n[None, :]
    h = tl.load(s_ptrs, mask=m, other=0.0).to(CT)
    h = h * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv
    tl.store(s_ptrs, h.to(state_ptr.dtype.element_ty), mask=m)
    out = tl.sum(h * Cv, axis=1)
    if HAS_D:
        out += x * tl.load(D_ptr + offs_d, mask=d_mask, other=0.0).to(CT)
    if HAS_Z:
        z = tl.load(z_ptr + row, mask=d_mask, other=0.0).to(CT)
        out *= z / (1.0 + tl.exp(-z))
    tl.store(out_ptr + row, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def _grouped(X: Tensor) -> Tensor:
    """B or C as (batch, G, N), contiguous."""
    return (X[:, None] if X.dim() == 2 else X).contiguous()


def forward(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
            D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
            dt_softplus: bool) -> Tensor:
    batch, dim = x.shape
    N = state.shape[2]
    _, tl_ct = compute_dtype(x)
    B, C = _grouped(B), _grouped(C)
    out = torch.empty_like(x)
    BN = pow2(N)
    BD = min(pow2(dim), max(1, TILE // BN))
    grid = (triton.cdiv(dim, BD), batch)
    _state_update_kernel[grid](state, x, dt, dt_bias, A, B, C, D, z, out, dim, N, B.shape[1],
                               C.shape[1], HAS_DT_BIAS=dt_bias is not None, HAS_D=D is not None,
                               HAS_Z=z is not None, SOFTPLUS=bool(dt_softplus), BD=BD, BN=BN,
                               CT=tl_ct, num_warps=4)
    return out
