"""Public ops: argument checks, backend dispatch, and the ``vimd::`` custom ops with autograd.

Each kernel is two custom ops (forward, backward) whose implementation calls the backend's entry
point from the registry's dispatch table (``registry.impl``); fake implementations make them
traceable, so ``torch.compile(fullgraph=True)`` sees them as single opaque nodes with no graph
break.

While ``torch.export`` traces, the forward ops' implementations run inline instead
(``native.traced``): the exported graph then holds what they call, the backend's C++ ops
(``torch.ops.vimd.*_cpu`` / ``*_cuda``, which load without Python, see ``vimd_kernels/native.py``)
or ATen ops (backend "ref"), so an AOT-compiled model runs without this package.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checks
from .mamba_inner import fused
from .mamba_inner.body import inner_core
from .native import traced
from .registry import impl, resolve

# ----------------------------------------------------------------------------- selective scan

def _scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                  z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
                  delta_softplus: bool, reverse: bool, backend: str) -> tuple[Tensor, Tensor]:
    out, last = impl("selective_scan", backend).forward(
        u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse)
    return out.contiguous(), last.contiguous()


_selective_scan_fwd = torch.library.custom_op("vimd::selective_scan_fwd", _scan_forward, mutates_args=())


@_selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, backend):
    return torch.empty_like(u), u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=A.dtype)


@torch.library.custom_op("vimd::selective_scan_bwd", mutates_args=())
def _selective_scan_bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                        z: Optional[Tensor], delta_bias: Optional[Tensor],
                        initial_state: Optional[Tensor], dout: Tensor, dlast_state: Optional[Tensor],
                        delta_softplus: bool, reverse: bool, backend: str) -> list[Tensor]:
    grads = impl("selective_scan", backend).backward(
        u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state, delta_softplus, reverse)
    # A missing optional input gets an empty placeholder (custom ops return tensors only).
    return [g.contiguous() if g is not None else u.new_empty(0) for g in grads]


@_selective_scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state, delta_softplus, reverse,
      backend):
    return [torch.empty_like(t) if t is not None else u.new_empty(0)
            for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)]


def _ss_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # an unused last state reaches the kernel as None, not zeros
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
    """Selective scan with mamba_ssm's ``selective_scan_fn`` signature, plus ``initial_state`` (with
    gradient), ``reverse`` and ``backend`` (None: ``VIMD_BACKEND``, else the fastest built backend for
    the tensors' device: cuda, else triton on a GPU; cpu, else ref on the CPU). Returns ``out`` or
    ``(out, last_state)``."""
    checks.selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state)
    name = resolve(backend, u.device)
    checks.backend("selective_scan", name, io=("u", u), state=("A", A), reverse=reverse)
    out, last = traced(_selective_scan_fwd, _scan_forward)(
        *(_contig(t) for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)),
        bool(delta_softplus), bool(reverse), name)
    return (out, last) if return_last_state else out


# ----------------------------------------------------------------------------- causal conv1d

def _conv_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, reverse: bool,
                  backend: str) -> Tensor:
    return impl("causal_conv1d", backend).forward(x, weight, bias, silu, reverse).contiguous()


_causal_conv1d_fwd = torch.library.custom_op("vimd::causal_conv1d_fwd", _conv_forward, mutates_args=())


@_causal_conv1d_fwd.register_fake
def _(x, weight, bias, silu, reverse, backend):
    return torch.empty_like(x)


@torch.library.custom_op("vimd::causal_conv1d_bwd", mutates_args=())
def _causal_conv1d_bwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], dout: Tensor, silu: bool,
                       reverse: bool, backend: str) -> list[Tensor]:
    dx, dw, db = impl("causal_conv1d", backend).backward(x, weight, bias, dout, silu, reverse)
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
    checks.backend("causal_conv1d", name, io=("x", x), width=("weight", weight), reverse=reverse)
    return traced(_causal_conv1d_fwd, _conv_forward)(
        x.contiguous(), weight.contiguous(), _contig(bias), activation is not None, bool(reverse), name)


# ----------------------------------------------------------------------------- Mamba mixer paths

def _composed_core(name: str, xz, *args):
    """The mixer body composed from the public ops (each saving its own activations)."""
    scan = lambda *a, **k: selective_scan_fn(*a, **k, backend=name)  # noqa: E731
    conv = lambda *a, **k: causal_conv1d_fn(*a, **k, backend=name)  # noqa: E731
    return inner_core(xz, *args, scan=scan, conv=conv)


def _branch(conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, D, delta_bias) -> dict:
    return dict(conv1d_weight=conv1d_weight, conv1d_bias=conv1d_bias, x_proj_weight=x_proj_weight,
                delta_proj_weight=delta_proj_weight, A=A, D=D, delta_bias=delta_bias)


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                   out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None,
                   delta_softplus=True, *, backend=None):
    """Fused Mamba mixer (mamba_ssm-compatible): xz (b, 2*d_inner, L) -> (b, L, d_model)."""
    checks.mamba_inner(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                       out_proj_weight, out_proj_bias, D=D, delta_bias=delta_bias)
    name = resolve(backend, xz.device)
    checks.mixer_backend(name, xz, [conv1d_weight], [A])
    if name == "ref" or B is not None or C is not None:  # given B/C: the composed path
        y = _composed_core(name, xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                           A, B, C, D, delta_bias, delta_softplus, False)
    else:  # the recompute mixer op (saves only xz and the weights)
        branch = _branch(conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, D, delta_bias)
        y = fused.mixer(name, xz, [branch], delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def bimamba_v2_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, D,
                     delta_bias, conv1d_weight_b, conv1d_bias_b, x_proj_weight_b,
                     delta_proj_weight_b, A_b, D_b, delta_bias_b, out_proj_weight,
                     out_proj_bias=None, delta_softplus=True, *, backend=None):
    """ViM "v2" mixer: out_proj((inner(xz) + flip(inner_b(flip(xz)))) / 2), with no flip copies."""
    checks.mamba_inner(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, None,
                       None, out_proj_weight, out_proj_bias, D=D, delta_bias=delta_bias)
    checks.mamba_inner(xz, conv1d_weight_b, conv1d_bias_b, x_proj_weight_b, delta_proj_weight_b,
                       A_b, None, None, out_proj_weight, out_proj_bias, suffix="_b", D=D_b,
                       delta_bias=delta_bias_b)
    name = resolve(backend, xz.device)
    checks.mixer_backend(name, xz, [conv1d_weight, conv1d_weight_b], [A, A_b])
    fwd = _branch(conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, D, delta_bias)
    bwd = _branch(conv1d_weight_b, conv1d_bias_b, x_proj_weight_b, delta_proj_weight_b, A_b, D_b,
                  delta_bias_b)
    if name != "ref":  # both directions in one mixer op (one launch where the backend can)
        y = fused.mixer(name, xz, [fwd, bwd], delta_softplus)
        return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)
    order = ("conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "A")
    y = _composed_core(name, xz, *(fwd[k] for k in order), None, None, D, delta_bias,
                       delta_softplus, False)
    y_b = _composed_core(name, xz, *(bwd[k] for k in order), None, None, D_b, delta_bias_b,
                         delta_softplus, True)
    return F.linear(((y + y_b) * 0.5).transpose(1, 2), out_proj_weight, out_proj_bias)


# ----------------------------------------------------------------------------- inference steps
# One decoding step with the state updated in place (no autograd: these are inference ops). A
# non-contiguous state is stepped in a contiguous copy that is written back. Under torch.export
# the implementations run inline like the forward ops'.

def _state_update_forward(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
                          dt_softplus: bool, backend: str) -> Tensor:
    return impl("state_update", backend).forward(
        state, x, dt, A, B, C, D, z, dt_bias, dt_softplus).contiguous()


_selective_state_update = torch.library.custom_op(
    "vimd::selective_state_update", _state_update_forward, mutates_args=("state",))


@_selective_state_update.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _stepped(state: Tensor, step) -> Tensor:
    """step(a contiguous state) -> out, with the result written back into ``state`` if it was copied."""
    work = state if state.is_contiguous() else state.contiguous()
    out = step(work)
    if work is not state:
        state.copy_(work)
    return out


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           *, backend=None):
    """One step of the selective scan (mamba_ssm's selective_state_update), state updated in place.

    state (batch, dim, N) in float32, float16 or bfloat16 (float64 with float64 x); x, dt, z
    (batch, dim); A (dim, N); B, C (batch, N) or grouped (batch, G, N); D, dt_bias (dim,).
    Returns out (batch, dim) in x's dtype. See vimd_kernels/state_update/reference.py.
    """
    checks.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias)
    name = resolve(backend, x.device)
    checks.backend("state_update", name, io=("x", x), state=("state", state))
    args = [_contig(t) for t in (x, dt, A, B, C, D, z, dt_bias)]
    step = traced(_selective_state_update, _state_update_forward)
    return _stepped(state, lambda s: step(s, *args, bool(dt_softplus), name))


def _conv_update_forward(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor],
                         silu: bool, cache_seqlens: Optional[Tensor], backend: str) -> Tensor:
    return impl("conv_update", backend).forward(
        x, conv_state, weight, bias, silu, cache_seqlens).contiguous()


_causal_conv1d_update = torch.library.custom_op(
    "vimd::causal_conv1d_update", _conv_update_forward, mutates_args=("conv_state",))


@_causal_conv1d_update.register_fake
def _(x, conv_state, weight, bias, silu, cache_seqlens, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None, *,
                         backend=None):
    """The next input(s) of the causal conv1d (causal_conv1d's causal_conv1d_update), conv_state
    updated in place.

    x (batch, dim) or (batch, dim, seqlen) -> out of the same shape and dtype; conv_state
    (batch, dim, state_len >= width - 1) in x's dtype; weight (dim, width) or (dim, 1, width);
    cache_seqlens (batch,) int32: conv_state is then a circular buffer. See
    vimd_kernels/conv_update/reference.py.
    """
    checks.tensor("x", x, (2, 3), checks.FLOAT_IO)
    squeeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if squeeze else x
    weight = checks.causal_conv1d_update(x3, conv_state, weight, bias, activation, cache_seqlens)
    name = resolve(backend, x.device)
    checks.backend("conv_update", name, io=("x", x), width=("weight", weight))
    seqlens = None if cache_seqlens is None else cache_seqlens.to(torch.int32).contiguous()
    args = (x3.contiguous(), weight.contiguous(), _contig(bias))
    step = traced(_causal_conv1d_update, _conv_update_forward)
    silu = activation is not None
    out = _stepped(conv_state, lambda s: step(args[0], s, *args[1:], silu, seqlens, name))
    return out.squeeze(-1) if squeeze else out
