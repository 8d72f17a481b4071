"""The recompute Mamba mixer, for every backend: conv1d+SiLU -> x_proj -> dt_proj -> z-gated scan.

One custom-op pair, ``vimd::mixer_fwd`` / ``vimd::mixer_bwd``, running the mixer body of
``body.py`` on the resolved backend's ``causal_conv1d`` / ``selective_scan`` entry points
(``registry.impl``). Autograd saves only xz and the weights; the backward recomputes the conv
output, the x_proj / dt_proj products and B/C, so a mixer holds one (b, 2*d_inner, L) activation
instead of ~six.

Directions are a leading weight dimension S: S = 1 is Mamba (forward in time), S = 2 is ViM v2,
direction 1 running in reverse (mirrored indexing in the kernels, no flip copies), and
y = (y_fwd + y_bwd) / 2. With S = 2 a backend whose modules provide ``bi_forward`` /
``bi_backward`` (the contract: ``vimd_kernels/backend.py``) runs both directions in one pass of
stacked (2, ...) tensors; otherwise the directions run one after the other, each one
``forward`` / ``backward`` call with ``reverse = bool(direction)`` (and the backward's transient
memory is that of one direction).

Matmul precision: x_proj / dt_proj run in the dtype of x_proj_weight (``mixer`` casts the weights
to the autocast dtype when autocast is on, exactly what autocast does to the composed path), and
autocast is switched off inside the op so the backward's recomputation matches the forward.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from torch import Tensor

from ..backend import Impl
from ..native import traced
from ..registry import impl
from .body import mixer_body, project


def _no_autocast(device_type: str):
    return torch.autocast(device_type, enabled=False)


def _at(t: Optional[Tensor], s: int) -> Optional[Tensor]:
    return None if t is None else t[s]


def _stack(per_dir: list) -> list:
    """Per-direction tuples of tensors (or None) -> list of (k, ...) tensors (or None)."""
    return [None if parts[0] is None else
            (parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)) for parts in zip(*per_dir)]


def _kernels(backend: str) -> tuple[Impl, Impl]:
    return impl("causal_conv1d", backend), impl("selective_scan", backend)


def _passes(scan: Impl, S: int) -> list[slice]:
    """Groups of directions computed together: both at once when the backend's scan runs them in
    one launch, else one by one (which also halves the backward's transient memory)."""
    if S == 2 and scan.bidirectional:
        return [slice(0, 2)]
    return [slice(s, s + 1) for s in range(S)]


def _both(sl: slice) -> bool:
    return sl.stop - sl.start == 2


def _conv_fwd(conv: Impl, x: Tensor, w: Tensor, b: Optional[Tensor], sl: slice) -> Tensor:
    """(k, b, d, L): x through the conv1d+SiLU of directions ``sl`` (direction 1 reversed)."""
    if _both(sl) and conv.bidirectional:
        return conv.bi_forward(x, w, b, True)
    return _stack([(conv.forward(x, w[s], _at(b, s), True, bool(s)),) for s in range(sl.start, sl.stop)])[0]


def _conv_bwd(conv: Impl, x, w, b, dout, sl: slice):
    if _both(sl) and conv.bidirectional:
        return conv.bi_backward(x, w, b, dout, True)
    return _stack([conv.backward(x, w[s], _at(b, s), dout[i].contiguous(), True, bool(s))
                   for i, s in enumerate(range(sl.start, sl.stop))])


def _scan_fwd(scan: Impl, u, delta, B, C, A, D, z, delta_bias, softplus, sl: slice) -> Tensor:
    """(k, b, d, L) z-gated scan outputs of directions ``sl``; u, delta, B, C are (k, ...), the
    weights A, D, delta_bias stacked over all directions."""
    if _both(sl):
        return scan.bi_forward(u, delta, A, B, C, D, z, delta_bias, softplus)[0]
    s = sl.start
    return scan.forward(u[0], delta[0], A[s], B[0], C[0], _at(D, s), z, _at(delta_bias, s), None,
                        softplus, bool(s))[0].unsqueeze(0)


def _scan_bwd(scan: Impl, u, delta, B, C, A, D, z, delta_bias, dout, softplus, sl: slice):
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of directions ``sl``, each (k, ...) or None."""
    if _both(sl):
        return scan.bi_backward(u, delta, A, B, C, D, z, delta_bias, dout, softplus)
    s = sl.start
    grads = scan.backward(u[0], delta[0], A[s], B[0], C[0], _at(D, s), z, _at(delta_bias, s), None,
                          dout[0].contiguous(), None, softplus, bool(s))
    return _stack([grads[:8]])


def _halves(conv: Impl, scan: Impl, xz: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """x = xz[:, :d] for the conv and z = xz[:, d:] for the scan: channel slices, passed as they are
    to kernel modules that read such rows (``Capabilities.row_views``), else copied contiguous."""
    x, z = xz[:, :d], xz[:, d:]
    if not conv.caps.row_views:
        x = x.contiguous()
    if not scan.caps.row_views:
        z = z.contiguous()
    return x, z


def _weights(x_proj_w: Tensor, dt_proj_w: Tensor, sl: slice) -> tuple[Tensor, Tensor]:
    """The projection weights of directions ``sl`` as (k, 1, ...): broadcast over the batch."""
    return x_proj_w[sl].unsqueeze(1), dt_proj_w[sl].unsqueeze(1)


def _mixer_forward(xz: Tensor, conv_w: Tensor, conv_b: Optional[Tensor], x_proj_w: Tensor,
                   dt_proj_w: Tensor, A: Tensor, D: Optional[Tensor], delta_bias: Optional[Tensor],
                   softplus: bool, backend: str) -> Tensor:
    """z-gated scan output (b, d_inner, L), averaged over the S directions of the stacked weights."""
    d, S, N = xz.shape[1] // 2, conv_w.shape[0], A.shape[-1]
    conv, scan = _kernels(backend)
    y = None
    with _no_autocast(xz.device.type):
        x, z = _halves(conv, scan, xz, d)
        for sl in _passes(scan, S):
            ys = mixer_body(x, partial(_conv_fwd, conv, w=conv_w, b=conv_b, sl=sl),
                            *_weights(x_proj_w, dt_proj_w, sl), N,
                            partial(_scan_fwd, scan, A=A, D=D, z=z, delta_bias=delta_bias,
                                    softplus=softplus, sl=sl))
            ys = ys[0] if ys.shape[0] == 1 else ys.sum(0)
            y = ys if y is None else y.add_(ys)
        return y if S == 1 else y.mul_(1.0 / S)


_mixer_fwd = torch.library.custom_op("vimd::mixer_fwd", _mixer_forward, mutates_args=())


@_mixer_fwd.register_fake
def _(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, delta_bias, softplus, backend):
    return xz.new_empty((xz.shape[0], xz.shape[1] // 2, xz.shape[2]))


@torch.library.custom_op("vimd::mixer_bwd", mutates_args=())
def _mixer_bwd(xz: Tensor, conv_w: Tensor, conv_b: Optional[Tensor], x_proj_w: Tensor,
               dt_proj_w: Tensor, A: Tensor, D: Optional[Tensor], delta_bias: Optional[Tensor],
               dy: Tensor, softplus: bool, backend: str) -> list[Tensor]:
    """Gradients of xz and every weight (stacked like the weights), recomputing the activations."""
    d, S, rank, N = xz.shape[1] // 2, conv_w.shape[0], dt_proj_w.shape[-1], A.shape[-1]
    dxz = None
    grads: list[list] = [[] for _ in range(7)]  # per pass: conv_w, conv_b, x_proj_w, dt_proj_w, A, D, db
    conv, scan = _kernels(backend)
    with _no_autocast(xz.device.type):
        x, z = _halves(conv, scan, xz, d)
        dy_s = dy if S == 1 else (dy * (1.0 / S)).to(dy.dtype)  # each direction gets dy / S
        for sl in _passes(scan, S):
            k = sl.stop - sl.start
            xc = _conv_fwd(conv, x, conv_w, conv_b, sl)
            x_dbl, delta, B, C = project(xc, *_weights(x_proj_w, dt_proj_w, sl), N)
            du, ddelta, dA, dB, dC, dD, dz, ddb = _scan_bwd(
                scan, xc, delta, B, C, A, D, z, delta_bias, dy_s.expand(k, *dy.shape), softplus, sl)
            del delta, B, C  # free the recomputed activations as soon as they are used
            if sl.stop == S:
                del z
            # the weight products as batched GEMMs over b (summed after), every operand a view
            mm = x_dbl.dtype
            g_delta = ddelta.to(mm)  # (k, b, d, L)
            del ddelta
            d_dt_proj_w = torch.matmul(g_delta, x_dbl[..., :rank]).sum(1)  # (k, d, rank)
            dx_dbl = torch.cat([torch.matmul(g_delta.transpose(-1, -2), dt_proj_w[sl].to(mm).unsqueeze(1)),
                                dB.transpose(-1, -2).to(mm), dC.transpose(-1, -2).to(mm)], dim=-1)
            del g_delta, x_dbl
            d_x_proj_w = torch.matmul(dx_dbl.transpose(-1, -2), xc.to(mm).transpose(-1, -2)).sum(1)  # (k, R, d)
            del xc
            # du (k, b, d, L) += x_proj_w^T dx_dbl^T, produced in du's layout
            du.add_(torch.matmul(x_proj_w[sl].to(mm).transpose(-1, -2).unsqueeze(1),
                                 dx_dbl.transpose(-1, -2)).to(du.dtype))
            del dx_dbl
            dx, d_conv_w, d_conv_b = _conv_bwd(conv, x, conv_w, conv_b, du, sl)
            del du
            if sl.stop == S:
                del x
            # this pass's dx and dz summed over its directions straight into dxz's two halves
            # (no concatenated copy); later passes add theirs
            first = dxz is None
            if first:
                dxz = torch.empty_like(xz)
            for half, g in ((dxz[:, :d], dx), (dxz[:, d:], dz)):
                if first and k > 1 and g.dtype == half.dtype:
                    torch.sum(g, 0, out=half)
                elif first:
                    half.copy_(g.sum(0) if k > 1 else g[0])  # fp32 sum, then one rounding
                else:
                    half.add_(g.sum(0) if k > 1 else g[0])
            del dx, dz
            for acc, g in zip(grads, (d_conv_w, d_conv_b, d_x_proj_w, d_dt_proj_w, dA, dD, ddb)):
                acc.append(g)
    like = (conv_w, conv_b, x_proj_w, dt_proj_w, A, D, delta_bias)
    out = [None if t is None else torch.cat(g).to(t.dtype) for g, t in zip(grads, like)]
    return [dxz] + [xz.new_empty(0) if g is None else g for g in out]


@_mixer_bwd.register_fake
def _(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, delta_bias, dy, softplus, backend):
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


def _stack_dirs(ts: list) -> Optional[Tensor]:
    """Stack one optional (d_inner,) weight over the directions; a direction without it gets zeros
    (conv bias, D and delta_bias all mean 0 when absent); None when no direction has it."""
    present = [t for t in ts if t is not None]
    if not present:
        return None
    ts = [torch.zeros_like(present[0]) if t is None else t for t in ts]
    return ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts)


def mixer(backend: str, xz: Tensor, branches: list[dict], delta_softplus: bool) -> Tensor:
    """(b, d_inner, L) = mean over branches of the z-gated scan output; branch s runs reversed when
    s = 1. Each branch: conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, D,
    delta_bias (already validated by the public op)."""
    stack = lambda k: torch.stack([b[k] for b in branches]) if len(branches) > 1 else branches[0][k].unsqueeze(0)  # noqa: E731
    conv_w = torch.stack([b["conv1d_weight"].reshape(b["conv1d_weight"].shape[0], -1) for b in branches])
    A = stack("A")
    x_proj_w, dt_proj_w = stack("x_proj_weight"), stack("delta_proj_weight")
    if torch.is_autocast_enabled(xz.device.type):
        mm = torch.get_autocast_dtype(xz.device.type)
        x_proj_w, dt_proj_w = x_proj_w.to(mm), dt_proj_w.to(mm)
    conv_b = _stack_dirs([b["conv1d_bias"] for b in branches])
    D = _stack_dirs([b["D"] for b in branches])
    delta_bias = _stack_dirs([b["delta_bias"] for b in branches])
    if conv_b is not None:
        conv_b = conv_b.to(conv_w.dtype)
    # under torch.export the op's body runs inline: the exported graph holds the backend's C++
    # conv/scan ops and the projections as ATen ops
    return traced(_mixer_fwd, _mixer_forward)(
        xz.contiguous(), conv_w.contiguous(), conv_b, x_proj_w.contiguous(), dt_proj_w.contiguous(),
        A.contiguous(), D, delta_bias, bool(delta_softplus), backend)
