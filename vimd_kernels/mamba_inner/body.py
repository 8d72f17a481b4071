"""The Mamba mixer body before out_proj: conv1d+SiLU -> x_proj -> dt_proj -> z-gated scan.

One body for every path: the references and the composed ops bind the conv and the scan to
``causal_conv1d_*`` / ``selective_scan_*`` callables (``inner_core``); the recompute mixer op
(``fused.py``) binds them to a backend's kernel entry points and recomputes the conv output and
``project`` in its backward.

x_proj / dt_proj run in the dtype of x_proj_weight (the conv output is cast to it); delta, B and C
come back in the conv output's dtype.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


def project(xc: Tensor, x_proj_w: Tensor, dt_proj_w: Tensor, N: int, B: Optional[Tensor] = None,
            C: Optional[Tensor] = None):
    """x_dbl (..., L, rank [+N] [+N]) and delta (..., d, L), B, C (..., N, L), contiguous in xc's
    dtype, of the conv output xc (..., d, L); the weights (..., rows, d) and (..., d, rank)
    broadcast over xc's leading dimensions. B / C given are passed through, else they are x_dbl's
    columns after delta's. The products take transposed operands as views and delta comes out as
    (d, L) rows directly: no (d, L)-sized transposed copies."""
    rank = dt_proj_w.shape[-1]
    x_dbl = torch.matmul(xc.transpose(-1, -2).to(x_proj_w.dtype), x_proj_w.transpose(-1, -2))
    delta = torch.matmul(dt_proj_w.to(x_dbl.dtype), x_dbl[..., :rank].transpose(-1, -2))
    col = rank
    out = []
    for X in (B, C):
        if X is None:
            X = x_dbl[..., col:col + N].transpose(-1, -2).to(xc.dtype).contiguous()
            col += N
        out.append(X)
    return x_dbl, delta.to(xc.dtype).contiguous(), *out


def mixer_body(x: Tensor, conv: Callable, x_proj_w: Tensor, dt_proj_w: Tensor, N: int,
               scan: Callable, B: Optional[Tensor] = None, C: Optional[Tensor] = None) -> Tensor:
    """``scan(xc, delta, B, C)`` of ``xc = conv(x)``: the z-gated scan output; ``conv`` and ``scan``
    carry everything else (weights, z, direction)."""
    xc = conv(x)
    _, delta, B, C = project(xc, x_proj_w, dt_proj_w, N, B, C)
    return scan(xc, delta, B, C)


def inner_core(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D,
               delta_bias, delta_softplus, reverse, scan, conv):
    """The mixer body of xz (b, 2*d_inner, L) -> (b, d_inner, L), with ``scan`` and ``conv``
    selective_scan_fn / causal_conv1d_fn-like callables (the dispatching ops or the references)."""
    x, z = xz.chunk(2, dim=1)
    return mixer_body(
        x, lambda x: conv(x, conv1d_weight, conv1d_bias, "silu", reverse=reverse),
        x_proj_weight, delta_proj_weight, A.shape[-1],
        lambda u, delta, B, C: scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse=reverse),
        B, C)
