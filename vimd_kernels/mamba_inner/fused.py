"""The recompute Mamba mixer, for every backend: conv1d+SiLU -> x_proj -> dt_proj -> z-gated scan.

One custom-op pair, ``vimd::mixer_fwd`` / ``vimd::mixer_bwd``, whose implementation calls the
resolved backend's ``causal_conv1d`` / ``selective_scan`` modules (``registry.kernel_module``).
Autograd saves only xz and the weights; the backward recomputes the conv output, the x_proj /
dt_proj products and B/C, so a mixer holds one (b, 2*d_inner, L) activation instead of ~six.

Directions are a leading weight dimension S: S = 1 is Mamba (forward in time), S = 2 is ViM v2,
direction 1 running in reverse (mirrored indexing in the kernels, no flip copies), and
y = (y_fwd + y_bwd) / 2. With S = 2 a backend kernel module may run both directions in one launch
by providing ``bi_forward`` / ``bi_backward`` (contracts below); otherwise each direction is one
``forward`` / ``backward`` call with ``reverse = bool(direction)``.

  causal_conv1d.bi_forward(x, weight (2, d, W), bias (2, d) | None, silu) -> out (2, b, d, L)
  causal_conv1d.bi_backward(x, weight, bias, dout (2, b, d, L), silu)
      -> (dx (2, b, d, L), dweight (2, d, W), dbias (2, d) | None)
  selective_scan.bi_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
      # u, delta (2, b, d, L); A (2, d, N); B, C (2, b, N, L); D, delta_bias (2, d) | None;
      # z (b, d, L) | None, shared by both directions
      -> (out (2, b, d, L), last_state (2, b, d, N))
  selective_scan.bi_backward(u, delta, A, B, C, D, z, delta_bias, dout (2, b, d, L), delta_softplus)
      -> (du, ddelta, dA, dB, dC, dD | None, dz (2, b, d, L) | None, ddelta_bias | None)

Matmul precision: x_proj / dt_proj run in the dtype of x_proj_weight (``mixer`` casts the weights
to the autocast dtype when autocast is on, exactly what autocast does to the composed path), and
autocast is switched off inside the op so the backward's recomputation matches the forward.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import kernel_module


def _no_autocast(device_type: str):
    return torch.autocast(device_type, enabled=False)


def _conv_fwd(backend: str, x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """(S, b, d, L): x through each direction's conv1d+SiLU, direction s reversed when s = 1."""
    mod = kernel_module("causal_conv1d", backend)
    if w.shape[0] == 2 and hasattr(mod, "bi_forward"):
        return mod.bi_forward(x, w, b, True)
    outs = [mod.forward(x, w[s], None if b is None else b[s], True, bool(s)) for s in range(w.shape[0])]
    return outs[0].unsqueeze(0) if len(outs) == 1 else torch.stack(outs)


def _conv_bwd(backend: str, x, w, b, dout):
    mod = kernel_module("causal_conv1d", backend)
    if w.shape[0] == 2 and hasattr(mod, "bi_backward"):
        return mod.bi_backward(x, w, b, dout, True)
    res = [mod.backward(x, w[s], None if b is None else b[s], dout[s].contiguous(), True, bool(s))
           for s in range(w.shape[0])]
    return _stack(res)


def _stack(per_dir: list) -> list:
    """Per-direction tuples of tensors (or None) -> tuple of (S, ...) tensors (or None)."""
    out = []
    for parts in zip(*per_dir):
        if parts[0] is None:
            out.append(None)
        else:
            out.append(parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts))
    return out


def _scan_fwd(backend, u, delta, A, B, C, D, z, delta_bias, softplus) -> Tensor:
    mod = kernel_module("selective_scan", backend)
    if u.shape[0] == 2 and hasattr(mod, "bi_forward"):
        return mod.bi_forward(u, delta, A, B, C, D, z, delta_bias, softplus)[0]
    pick = lambda t, s: None if t is None else t[s]  # noqa: E731
    outs = [mod.forward(u[s], delta[s], A[s], B[s], C[s], pick(D, s), z, pick(delta_bias, s), None,
                        softplus, bool(s))[0] for s in range(u.shape[0])]
    return outs[0].unsqueeze(0) if len(outs) == 1 else torch.stack(outs)


def _scan_bwd(backend, u, delta, A, B, C, D, z, delta_bias, dout, softplus):
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each (S, ...) (dz per direction) or None."""
    mod = kernel_module("selective_scan", backend)
    if u.shape[0] == 2 and hasattr(mod, "bi_backward"):
        return mod.bi_backward(u, delta, A, B, C, D, z, delta_bias, dout, softplus)
    pick = lambda t, s: None if t is None else t[s]  # noqa: E731
    res = []
    for s in range(u.shape[0]):
        du, ddelta, dA, dB, dC, dD, dz, ddb, _ = mod.backward(
            u[s], delta[s], A[s], B[s], C[s], pick(D, s), z, pick(delta_bias, s), None,
            dout[s].contiguous(), None, softplus, bool(s))
        res.append((du, ddelta, dA, dB, dC, dD, dz, ddb))
    return _stack(res)


def _project(xc: Tensor, x_proj_w: Tensor, dt_proj_w: Tensor, N: int):
    """x_dbl (S, b, L, rank + 2N) and delta, B, C ((S, b, d, L), (S, b, N, L) x2) in xc's dtype."""
    rank = dt_proj_w.shape[-1]
    x_dbl = torch.matmul(xc.transpose(-1, -2).to(x_proj_w.dtype), x_proj_w.transpose(-1, -2).unsqueeze(1))
    delta = torch.matmul(x_dbl[..., :rank], dt_proj_w.to(x_dbl.dtype).transpose(-1, -2).unsqueeze(1))
    delta = delta.transpose(-1, -2).to(xc.dtype).contiguous()
    B = x_dbl[..., rank:rank + N].transpose(-1, -2).to(xc.dtype).contiguous()
    C = x_dbl[..., rank + N:rank + 2 * N].transpose(-1, -2).to(xc.dtype).contiguous()
    return x_dbl, delta, B, C


@torch.library.custom_op("vimd::mixer_fwd", mutates_args=())
def _mixer_fwd(xz: Tensor, conv_w: Tensor, conv_b: Optional[Tensor], x_proj_w: Tensor,
               dt_proj_w: Tensor, A: Tensor, D: Optional[Tensor], delta_bias: Optional[Tensor],
               softplus: bool, backend: str) -> Tensor:
    """z-gated scan output (b, d_inner, L), averaged over the S directions of the stacked weights."""
    d = xz.shape[1] // 2
    with _no_autocast(xz.device.type):
        x, z = xz[:, :d].contiguous(), xz[:, d:].contiguous()
        xc = _conv_fwd(backend, x, conv_w, conv_b)
        _, delta, B, C = _project(xc, x_proj_w, dt_proj_w, A.shape[-1])
        y = _scan_fwd(backend, xc, delta, A, B, C, D, z, delta_bias, softplus)
        return y[0].contiguous() if y.shape[0] == 1 else (y.sum(0) * (1.0 / y.shape[0])).to(y.dtype)


@_mixer_fwd.register_fake
def _(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, delta_bias, softplus, backend):
    return xz.new_empty((xz.shape[0], xz.shape[1] // 2, xz.shape[2]))


@torch.library.custom_op("vimd::mixer_bwd", mutates_args=())
def _mixer_bwd(xz: Tensor, conv_w: Tensor, conv_b: Optional[Tensor], x_proj_w: Tensor,
               dt_proj_w: Tensor, A: Tensor, D: Optional[Tensor], delta_bias: Optional[Tensor],
               dy: Tensor, softplus: bool, backend: str) -> list[Tensor]:
    """Gradients of xz and every weight (stacked like the weights), recomputing the activations."""
    d = xz.shape[1] // 2
    S, rank, N = conv_w.shape[0], dt_proj_w.shape[-1], A.shape[-1]
    with _no_autocast(xz.device.type):
        x, z = xz[:, :d].contiguous(), xz[:, d:].contiguous()
        xc = _conv_fwd(backend, x, conv_w, conv_b)
        x_dbl, delta, B, C = _project(xc, x_proj_w, dt_proj_w, N)
        dout = dy.unsqueeze(0) if S == 1 else (dy * (1.0 / S)).to(dy.dtype).expand(S, *dy.shape).contiguous()
        du, ddelta, dA, dB, dC, dD, dz, ddb = _scan_bwd(backend, xc, delta, A, B, C, D, z, delta_bias,
                                                        dout, softplus)
        mm = x_dbl.dtype
        g_delta = ddelta.transpose(-1, -2).to(mm)                       # (S, b, L, d)
        d_dt_proj_w = torch.einsum("sbld,sblr->sdr", g_delta, x_dbl[..., :rank]).to(dt_proj_w.dtype)
        dx_dbl = torch.cat([torch.matmul(g_delta, dt_proj_w.to(mm).unsqueeze(1)),
                            dB.transpose(-1, -2).to(mm), dC.transpose(-1, -2).to(mm)], dim=-1)
        d_x_proj_w = torch.einsum("sblk,sbdl->skd", dx_dbl, xc.to(mm)).to(x_proj_w.dtype)
        dxc = du + torch.matmul(dx_dbl, x_proj_w.unsqueeze(1)).transpose(-1, -2).to(du.dtype)
        dx, d_conv_w, d_conv_b = _conv_bwd(backend, x, conv_w, conv_b, dxc.contiguous())
        dxz = torch.cat([dx.sum(0).to(xz.dtype), dz.sum(0).to(xz.dtype)], dim=1)
    empty = xz.new_empty(0)
    return [dxz, d_conv_w.contiguous(), empty if d_conv_b is None else d_conv_b.contiguous(),
            d_x_proj_w, d_dt_proj_w, dA.contiguous(), empty if dD is None else dD.contiguous(),
            empty if ddb is None else ddb.contiguous()]


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
    return _mixer_fwd(xz.contiguous(), conv_w.contiguous(), conv_b, x_proj_w.contiguous(),
                      dt_proj_w.contiguous(), A.contiguous(), D, delta_bias, bool(delta_softplus), backend)
