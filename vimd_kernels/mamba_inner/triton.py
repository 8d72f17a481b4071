"""Triton mixer body (``ops._core`` picks up ``core``): conv1d+SiLU -> x_proj -> dt_proj -> scan.

One ``vimd::triton_mixer_fwd`` custom op per direction, whose backward keeps only xz and the weights
and recomputes the conv output, x_proj/dt_proj products and B/C (activation memory of one
(b, 2*d_inner, L) tensor instead of six); the reverse direction of ViM runs the conv and the scan
with ``reverse=True`` (addresses mirrored in the kernels), so no flip is ever materialised.
Given (not data-dependent) B or C fall back to the composed path with the Triton kernels.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..causal_conv1d import triton as conv
from ..selective_scan import triton as scan


def _body(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, reverse):
    d = xz.shape[1] // 2
    rank, N = dt_proj_w.shape[1], A.shape[1]
    x, z = xz[:, :d].contiguous(), xz[:, d:].contiguous()
    xc = conv.forward(x, conv_w, conv_b, True, reverse)
    x_dbl = F.linear(xc.transpose(1, 2), x_proj_w)  # (b, L, rank + 2N)
    delta = F.linear(x_dbl[..., :rank], dt_proj_w).transpose(1, 2).to(xc.dtype).contiguous()
    B = x_dbl[..., rank:rank + N].transpose(1, 2).to(xc.dtype).contiguous()
    C = x_dbl[..., rank + N:rank + 2 * N].transpose(1, 2).to(xc.dtype).contiguous()
    return x, z, xc, x_dbl, delta, B, C


@torch.library.custom_op("vimd::triton_mixer_fwd", mutates_args=())
def _mixer_fwd(xz: Tensor, conv_w: Tensor, conv_b: Optional[Tensor], x_proj_w: Tensor,
               dt_proj_w: Tensor, A: Tensor, D: Optional[Tensor], delta_bias: Optional[Tensor],
               softplus: bool, reverse: bool) -> Tensor:
    _, z, xc, _, delta, B, C = _body(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, reverse)
    y, _ = scan.forward(xc, delta, A, B, C, D, z, delta_bias, None, softplus, reverse)
    return y


@_mixer_fwd.register_fake
def _(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, delta_bias, softplus, reverse):
    return xz.new_empty((xz.shape[0], xz.shape[1] // 2, xz.shape[2]))


@torch.library.custom_op("vimd::triton_mixer_bwd", mutates_args=())
def _mixer_bwd(xz: Tensor, conv_w: Tensor, conv_b: Optional[Tensor], x_proj_w: Tensor,
               dt_proj_w: Tensor, A: Tensor, D: Optional[Tensor], delta_bias: Optional[Tensor],
               dy: Tensor, softplus: bool, reverse: bool) -> list[Tensor]:
    rank = dt_proj_w.shape[1]
    x, z, xc, x_dbl, delta, B, C = _body(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, reverse)
    du, ddelta, dA, dB, dC, dD, dz, ddb, _ = scan.backward(
        xc, delta, A, B, C, D, z, delta_bias, None, dy, None, softplus, reverse)
    g_delta = ddelta.transpose(1, 2).to(x_dbl.dtype)  # (b, L, d)
    d_dt_proj_w = torch.einsum("bld,blr->dr", g_delta, x_dbl[..., :rank]).to(dt_proj_w.dtype)
    dx_dbl = torch.cat([g_delta @ dt_proj_w.to(x_dbl.dtype), dB.transpose(1, 2).to(x_dbl.dtype),
                        dC.transpose(1, 2).to(x_dbl.dtype)], dim=-1)  # (b, L, rank + 2N)
    d_x_proj_w = torch.einsum("blk,bdl->kd", dx_dbl, xc.to(x_dbl.dtype)).to(x_proj_w.dtype)
    dxc = (du + (dx_dbl @ x_proj_w.to(x_dbl.dtype)).transpose(1, 2).to(du.dtype)).contiguous()
    dx, d_conv_w, d_conv_b = conv.backward(x, conv_w, conv_b, dxc, True, reverse)
    empty = xz.new_empty(0)
    return [torch.cat([dx, dz], dim=1), d_conv_w, empty if d_conv_b is None else d_conv_b,
            d_x_proj_w, d_dt_proj_w, dA, empty if dD is None else dD, empty if ddb is None else ddb]


@_mixer_bwd.register_fake
def _(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, delta_bias, dy, softplus, reverse):
    like = lambda t: xz.new_empty(0) if t is None else torch.empty_like(t)  # noqa: E731
    return [torch.empty_like(xz), like(conv_w), like(conv_b), like(x_proj_w), like(dt_proj_w),
            like(A), like(D), like(delta_bias)]


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8])
    ctx.flags = inputs[8:]


def _backward(ctx, dy):
    saved = ctx.saved_tensors
    grads = _mixer_bwd(*saved, dy.contiguous(), *ctx.flags)
    return (*(g if t is not None else None for g, t in zip(grads, saved)), None, None)


_mixer_fwd.register_autograd(_backward, setup_context=_setup)


def core(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D, delta_bias,
         delta_softplus, reverse):
    """The z-gated scan output (b, d_inner, L) before out_proj; same arguments as ``ops.inner_core``."""
    from ..ops import causal_conv1d_fn, inner_core, selective_scan_fn
    conv_w = conv1d_weight.reshape(conv1d_weight.shape[0], -1)
    if B is not None or C is not None:
        return inner_core(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                          D, delta_bias, delta_softplus, reverse,
                          scan=lambda *a, **k: selective_scan_fn(*a, **k, backend="triton"),
                          conv=lambda *a, **k: causal_conv1d_fn(*a, **k, backend="triton"))
    from .. import checks
    d_inner = xz.shape[1] // 2
    checks.causal_conv1d(xz[:, :d_inner], conv_w, conv1d_bias, "silu")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        checks.tensor(name, t, (1,), optional=True)
        if t is not None:
            checks.shape(name, t, (d_inner,))
    return _mixer_fwd(xz.contiguous(), conv_w.contiguous(), _c(conv1d_bias), x_proj_weight.contiguous(),
                      delta_proj_weight.contiguous(), A.contiguous(), _c(D), _c(delta_bias),
                      bool(delta_softplus), bool(reverse))


def _c(t):
    return None if t is None else t.contiguous()
