"""The Mamba-1 mixer with mamba_ssm's and Vim's extra options, on vimd's public ops.

``mixer`` is the body before out_proj: causal conv1d + SiLU, x_proj, dt_proj, then the z-gated
selective scan, with what mamba_ssm's mixer functions add on top of vimd's ops: biases on the
projected B and C, RMS norms on B, C and dt (mamba_ssm 2.x), and Vim's bimamba "v1" (a second scan
with its own A_b over the same conv output, delta, B, C and z, run backwards in time and added).
It is composed from ``causal_conv1d_fn`` and ``selective_scan_fn`` (``reference=True``: the
``*_ref`` oracles), so autograd differentiates every option. ``mamba_inner`` takes vimd's fused
``mamba_inner_fn`` whenever none of the extras is asked for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vimd_kernels import (causal_conv1d_fn, causal_conv1d_ref, mamba_inner_fn, selective_scan_fn,
                          selective_scan_ref)

from .layer_norm import rms_norm_fn

_OPS = {False: (causal_conv1d_fn, selective_scan_fn), True: (causal_conv1d_ref, selective_scan_ref)}


def real_A(A: Tensor, name: str = "A") -> None:
    if A.is_complex():
        raise NotImplementedError(f"{name}: complex A (the S4D-Lin variant) is not supported by "
                                  "vimd's kernels; pass a real A")


def _projected(x_dbl: Tensor, cols: slice, bias, rms_weight, eps: float) -> Tensor:
    """B or C (batch, N, L) from x_dbl's columns (batch, L, ...), plus its bias, RMS-normed."""
    X = x_dbl[..., cols]
    if bias is not None:
        X = X + bias.to(X.dtype)
    if rms_weight is not None:
        X = rms_norm_fn(X, rms_weight, None, eps=eps)
    return X.transpose(1, 2)


def mixer(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B=None, C=None,
          D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None, delta_softplus=True, *,
          A_b=None, b_rms_weight=None, c_rms_weight=None, dt_rms_weight=None, rms_eps=1e-6,
          return_last_state=False, reference=False, backend=None):
    """xz (batch, 2*d_inner, L) -> y (batch, d_inner, L) [, last_state (batch, d_inner, N)].

    B / C given are used as they are (their bias and norm apply to the projected ones only).
    """
    real_A(A)
    if A_b is not None:
        real_A(A_b, "A_b")
        if return_last_state:
            raise ValueError("return_last_state: a bidirectional (A_b) mixer has no last state")
    for name, X, w in (("B", B, b_rms_weight), ("C", C, c_rms_weight)):
        if X is not None and w is not None:
            raise NotImplementedError(f"{name.lower()}_rms_weight with a given {name}: the norm "
                                      f"applies to the {name} projected by x_proj")
    conv, scan = _OPS[reference]
    x, z = xz.chunk(2, dim=1)
    xc = conv(x, conv1d_weight, conv1d_bias, "silu", backend=backend)
    rank, N = delta_proj_weight.shape[1], A.shape[1]
    x_dbl = F.linear(xc.transpose(1, 2), x_proj_weight)  # (batch, L, rank [+N] [+N])
    if dt_rms_weight is None:  # (batch, d_inner, L) straight from the product
        delta = torch.matmul(delta_proj_weight, x_dbl[..., :rank].transpose(1, 2))
    else:  # the norm runs over d_inner: (batch, L, d_inner) first
        delta = rms_norm_fn(F.linear(x_dbl[..., :rank], delta_proj_weight), dt_rms_weight, None,
                            eps=rms_eps).transpose(1, 2)
    if B is None:
        B = _projected(x_dbl, slice(rank, rank + N), B_proj_bias, b_rms_weight, rms_eps)
    if C is None:
        C = _projected(x_dbl, slice(x_dbl.shape[-1] - N, None), C_proj_bias, c_rms_weight, rms_eps)
    y = scan(xc, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
             backend=backend)
    if A_b is not None:
        y = y + scan(xc, delta, A_b, B, C, D, z, delta_bias, delta_softplus, reverse=True,
                     backend=backend)
    return y


def out_proj(y: Tensor, weight: Tensor, bias) -> Tensor:
    """(batch, d_inner, L) -> (batch, L, d_model)."""
    return F.linear(y.transpose(1, 2), weight, bias)


def mamba_inner(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
                C_proj_bias=None, delta_softplus=True, *, b_rms_weight=None, c_rms_weight=None,
                dt_rms_weight=None, rms_eps=1e-6, reference=False, backend=None):
    """mamba_ssm's mamba_inner_fn: vimd's fused op, or the composed mixer for the extras."""
    real_A(A)
    extras = (B_proj_bias, C_proj_bias, b_rms_weight, c_rms_weight, dt_rms_weight)
    if not reference and all(e is None for e in extras):
        return mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                              out_proj_weight, out_proj_bias, A, B, C, D, delta_bias,
                              delta_softplus, backend=backend)
    y = mixer(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D,
              delta_bias, B_proj_bias, C_proj_bias, delta_softplus, b_rms_weight=b_rms_weight,
              c_rms_weight=c_rms_weight, dt_rms_weight=dt_rms_weight, rms_eps=rms_eps,
              reference=reference, backend=backend)
    return out_proj(y, out_proj_weight, out_proj_bias)


def bimamba_v1(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
               out_proj_bias, A, A_b, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
               C_proj_bias=None, delta_softplus=True, *, reference=False, backend=None):
    """Vim's bimamba_inner_fn ("v1"): out_proj(y + flip(y_b)), one conv and projection shared by
    both directions, the backward scan with A_b on the time-reversed conv output, delta, B, C, z."""
    y = mixer(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D,
              delta_bias, B_proj_bias, C_proj_bias, delta_softplus, A_b=A_b, reference=reference,
              backend=backend)
    return out_proj(y, out_proj_weight, out_proj_bias)


__all__ = ["mixer", "mamba_inner", "bimamba_v1", "out_proj", "real_A"]
