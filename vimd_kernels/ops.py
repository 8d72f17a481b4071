"""Public ops: argument checks, backend dispatch, and the ``vimd::`` custom ops with autograd.

Each kernel is two custom ops (forward, backward) whose implementation looks up
``vimd_kernels/<kernel>/<backend>.py``; fake implementations make them traceable, so
``torch.compile(fullgraph=True)`` sees them as single opaque nodes with no graph break.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checks
from .registry import BACKENDS, kernel_module, resolve

# ----------------------------------------------------------------------------- selective scan

_SS_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@torch.library.custom_op("vimd::selective_scan_fwd", mutates_args=())
def _selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                        z: Optional[Tensor], delta_bias: Optional[Tensor],
                        initial_state: Optional[Tensor], delta_softplus: bool, reverse: bool,
                        backend: str) -> tuple[Tensor, Tensor]:
    out, last = kernel_module("selective_scan", backend).forward(
        u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse)
    return out.contiguous(), last.contiguous()


@_selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, backend):
    return torch.empty_like(u), u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=A.dtype)


@torch.library.custom_op("vimd::selective_scan_bwd", mutates_args=())
def _selective_scan_bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                        z: Optional[Tensor], delta_bias: Optional[Tensor],
                        initial_state: Optional[Tensor], dout: Tensor, dlast_state: Optional[Tensor],
                        delta_softplus: bool, reverse: bool, backend: str) -> list[Tensor]:
    grads = kernel_module("selective_scan", backend).backward(
        u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state, delta_softplus, reverse)
    # A missing optional input gets an empty placeholder (custom ops return tensors only).
    return [g.contiguous() if g is not None else u.new_empty(0) for g in grads]


@_selective_scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state, delta_softplus, reverse,
      backend):
    return [torch.empty_like(t) if t is not None else u.new_empty(0)
            for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)]


def _ss_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9])
    ctx.flags = inputs[9:]


def _ss_backward(ctx, dout, dlast_state):
    saved = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(saved[0])
    grads = _selective_scan_bwd(*saved, dout.contiguous(),
                                None if dlast_state is None else dlast_state.contiguous(), *ctx.flags)
    return (*(g if t is not None else None for g, t in zip(grads, saved)), None, None, None)


_selective_scan_fwd.register_autograd(_ss_backward, setup_context=_ss_setup_context)


def _contig(t: Optional[Tensor]) -> Optional[Tensor]:
    return t.contiguous() if t is not None else None


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, *, initial_state=None, reverse=False, backend=None):
    """Selective scan (mamba_ssm-compatible). See DESIGN.md "The ops contract"."""
    checks.selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state)
    name = resolve(backend, u.device)
    out, last = _selective_scan_fwd(*(_contig(t) for t in (u, delta, A, B, C, D, z, delta_bias,
                                                           initial_state)),
                                    bool(delta_softplus), bool(reverse), name)
    return (out, last) if return_last_state else out


# ----------------------------------------------------------------------------- causal conv1d

@torch.library.custom_op("vimd::causal_conv1d_fwd", mutates_args=())
def _causal_conv1d_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, reverse: bool,
                       backend: str) -> Tensor:
    return kernel_module("causal_conv1d", backend).forward(x, weight, bias, silu, reverse).contiguous()


@_causal_conv1d_fwd.register_fake
def _(x, weight, bias, silu, reverse, backend):
    return torch.empty_like(x)


@torch.library.custom_op("vimd::causal_conv1d_bwd", mutates_args=())
def _causal_conv1d_bwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], dout: Tensor, silu: bool,
                       reverse: bool, backend: str) -> list[Tensor]:
    dx, dw, db = kernel_module("causal_conv1d", backend).backward(x, weight, bias, dout, silu, reverse)
    return [dx.contiguous(), dw.contiguous(), db if db is not None else x.new_empty(0)]


@_causal_conv1d_bwd.register_fake
def _(x, weight, bias, dout, silu, reverse, backend):
    return [torch.empty_like(x), torch.empty_like(weight),
            torch.empty_like(bias) if bias is not None else x.new_empty(0)]


def _conv_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.flags = inputs[3:]


def _conv_backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = _causal_conv1d_bwd(x, weight, bias, dout.contiguous(), *ctx.flags)
    return dx, dw, (db if bias is not None else None), None, None, None


_causal_conv1d_fwd.register_autograd(_conv_backward, setup_context=_conv_setup_context)


def causal_conv1d_fn(x, weight, bias=None, activation=None, *, reverse=False, backend=None):
    """Depthwise causal conv1d (causal_conv1d-compatible); weight (dim, width) or (dim, 1, width)."""
    weight = checks.causal_conv1d(x, weight, bias, activation)
    name = resolve(backend, x.device)
    return _causal_conv1d_fwd(x.contiguous(), weight.contiguous(), _contig(bias),
                              activation is not None, bool(reverse), name)


# ----------------------------------------------------------------------------- Mamba mixer paths

def inner_core(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D,
               delta_bias, delta_softplus, reverse, scan, conv):
    """conv1d+SiLU -> x_proj -> dt_proj -> scan(z-gated): the mixer body before out_proj, (b, d, L).

    ``scan`` and ``conv`` are selective_scan_fn/causal_conv1d_fn-like callables, so the same body
    serves the dispatching ops and the pure references.
    """
    rank = delta_proj_weight.shape[1]
    N = A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = conv(x, conv1d_weight, conv1d_bias, "silu", reverse=reverse)
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # (b, L, rank [+N] [+N])
    delta = F.linear(x_dbl[..., :rank], delta_proj_weight).transpose(1, 2).to(x.dtype)
    col = rank
    if B is None:
        B = x_dbl[..., col:col + N].transpose(1, 2).to(x.dtype)
        col += N
    if C is None:
        C = x_dbl[..., col:col + N].transpose(1, 2).to(x.dtype)
    return scan(x, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse=reverse)


# Backends shipping a fused mixer body (vimd_kernels/mamba_inner/<backend>.py, ``core``). The usable
# ones are imported once, when vimd_kernels is imported (see _load_fused_cores at the end of this
# file), so dispatch under torch.compile is a dict lookup: an import while tracing is a graph break.
_FUSED_CORES: dict = {}


def _load_fused_cores() -> None:
    for b in BACKENDS:
        if b == "ref" or not BACKENDS[b].available():
            continue
        if importlib.util.find_spec(f"vimd_kernels.mamba_inner.{b}") is not None:
            _FUSED_CORES[b] = importlib.import_module(f"vimd_kernels.mamba_inner.{b}").core


def _fused_core(backend: str):
    return _FUSED_CORES.get(backend)


def _core(backend, xz, *args):
    name = resolve(backend, xz.device)
    fused = _fused_core(name)
    if fused is not None:
        return fused(xz, *args)
    scan = lambda *a, **k: selective_scan_fn(*a, **k, backend=name)  # noqa: E731
    conv = lambda *a, **k: causal_conv1d_fn(*a, **k, backend=name)  # noqa: E731
    return inner_core(xz, *args, scan=scan, conv=conv)


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                   out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None,
                   delta_softplus=True, *, backend=None):
    """Fused Mamba mixer (mamba_ssm-compatible): xz (b, 2*d_inner, L) -> (b, L, d_model)."""
    checks.mamba_inner(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                       out_proj_weight, out_proj_bias, D=D, delta_bias=delta_bias)
    y = _core(backend, xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D,
              delta_bias, delta_softplus, False)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def bimamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, D,
                     delta_bias, conv1d_weight_b, conv1d_bias_b, x_proj_weight_b,
                     delta_proj_weight_b, A_b, D_b, delta_bias_b, out_proj_weight,
                     out_proj_bias=None, delta_softplus=True, *, backend=None):
    """ViM "v2" mixer: out_proj((inner(xz) + flip(inner_b(flip(xz)))) / 2), with no flip copies."""
    checks.mamba_inner(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, None,
                       None, out_proj_weight, out_proj_bias, D=D, delta_bias=delta_bias)
    checks.mamba_inner(xz, conv1d_weight_b, conv1d_bias_b, x_proj_weight_b, delta_proj_weight_b,
                       A_b, None, None, out_proj_weight, out_proj_bias, suffix="_b", D=D_b,
                       delta_bias=delta_bias_b)
    y = _core(backend, xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, None,
              None, D, delta_bias, delta_softplus, False)
    y_b = _core(backend, xz, conv1d_weight_b, conv1d_bias_b, x_proj_weight_b, delta_proj_weight_b,
                A_b, None, None, D_b, delta_bias_b, delta_softplus, True)
    return F.linear(((y + y_b) * 0.5).transpose(1, 2), out_proj_weight, out_proj_bias)


_load_fused_cores()
