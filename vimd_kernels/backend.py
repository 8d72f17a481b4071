"""The backend contract: what a backend module of a kernel provides, and its check at load.

A backend of a kernel is one module, ``vimd_kernels/<kernel>/<module>.py`` (``reference`` for the
"ref" backend, else the backend's name). The registry imports it once, checks it here and keeps the
result (an ``Impl``) in its dispatch table. A module provides:

Required entry points, with exactly the parameters of ``<kernel>/reference.py`` (``SPECS``):

  selective_scan.forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                         reverse) -> (out, last_state)
  selective_scan.backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
                          delta_softplus, reverse)
      -> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state), None for absent inputs
  causal_conv1d.forward(x, weight (dim, width), bias, silu, reverse) -> out
  causal_conv1d.backward(x, weight, bias, dout, silu, reverse) -> (dx, dweight, dbias | None)

Inference steps (no backward; the state is updated in place and the output returned):

  state_update.forward(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus) -> out
      # state (batch, dim, N), its own dtype; x, dt, z, out (batch, dim); A (dim, N);
      # B, C (batch, N) or grouped (batch, G, N); D, dt_bias (dim,) | None
  conv_update.forward(x, conv_state, weight, bias, silu, cache_seqlens) -> out
      # x, out (batch, dim, seqlen); conv_state (batch, dim, state_len >= width - 1), x's dtype;
      # weight (dim, width); cache_seqlens (batch,) int32 | None (conv_state a circular buffer)

Optional entry points, both or neither: ViM's two directions in one launch, used by the mixer op
(``mamba_inner/fused.py``). Direction 1 runs reversed; every tensor but x / z has a leading
direction dimension of 2:

  causal_conv1d.bi_forward(x, weight (2, d, W), bias (2, d) | None, silu) -> out (2, b, d, L)
  causal_conv1d.bi_backward(x, weight, bias, dout (2, b, d, L), silu)
      -> (dx (2, b, d, L), dweight (2, d, W), dbias (2, d) | None)
  selective_scan.bi_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
      # u, delta (2, b, d, L); A (2, d, N); B, C (2, b, N, L); D, delta_bias (2, d) | None;
      # z (b, d, L) | None, shared by both directions
      -> (out (2, b, d, L), last_state (2, b, d, N))
  selective_scan.bi_backward(u, delta, A, B, C, D, z, delta_bias, dout (2, b, d, L), delta_softplus)
      -> (du, ddelta, dA, dB, dC, dD | None, dz (2, b, d, L) | None, ddelta_bias | None)
      # dout may be an expanded view (both directions read one buffer; each dout[s] is contiguous)

Capabilities, declared as data: a module-level ``CAPS = Capabilities(...)``. The public ops check
the inputs against them (``checks.backend``) before anything reaches the module, so an input the
backend cannot take raises a ValueError/TypeError naming the argument.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class ContractError(TypeError):
    """A backend module that does not follow the contract (raised when the registry loads it)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend module of a kernel takes."""
    dtypes: tuple  # dtypes of the row operands: u, delta, z (selective scan), x (conv)
    max_state: Optional[int] = None  # selective scan: the most states N (None: any)
    pass_state: Optional[int] = None  # selective scan: the most states one kernel pass holds; a
    # larger N (up to max_state) runs as passes over slices of the states, their outputs summed
    max_width: Optional[int] = None  # causal conv1d: the widest weight (None: the ops' 2..8)
    reverse: bool = True  # takes reverse=True (the mixer's direction 1)
    deterministic: bool = True  # gradients bitwise reproducible from run to run
    row_views: bool = False  # takes x / z as channel slices of the mixer's xz (rows of L
    # contiguous steps, any batch stride) without a copy

    def __post_init__(self):
        if (not isinstance(self.dtypes, tuple) or not self.dtypes
                or any(d not in FLOAT_DTYPES for d in self.dtypes)):
            raise ContractError(f"Capabilities.dtypes must be a non-empty tuple of {FLOAT_DTYPES}, "
                                f"got {self.dtypes!r}")
        for name, least in (("max_state", 1), ("pass_state", 1), ("max_width", 2)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                raise ContractError(f"Capabilities.{name} must be None or an int >= {least}, got {v!r}")
        if self.pass_state is not None and self.max_state is not None and self.pass_state >= self.max_state:
            raise ContractError(f"Capabilities.pass_state ({self.pass_state}) must be below max_state "
                                f"({self.max_state}): it is the point above which N runs in slices")
        for name in ("reverse", "deterministic", "row_views"):
            if not isinstance(getattr(self, name), bool):
                raise ContractError(f"Capabilities.{name} must be a bool, got {getattr(self, name)!r}")


LIMITS = ("max_state", "pass_state", "max_width")  # the Capabilities fields that belong to one kernel


@dataclass(frozen=True)
class KernelSpec:
    required: dict  # entry point -> its parameter names
    optional: dict  # entry points a module provides together or not at all
    limits: tuple  # the LIMITS that apply to the kernel


_SCAN_IN = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
SPECS = {
    "selective_scan": KernelSpec(
        required={"forward": (*_SCAN_IN, "initial_state", "delta_softplus", "reverse"),
                  "backward": (*_SCAN_IN, "initial_state", "dout", "dlast_state", "delta_softplus",
                               "reverse")},
        optional={"bi_forward": (*_SCAN_IN, "delta_softplus"),
                  "bi_backward": (*_SCAN_IN, "dout", "delta_softplus")},
        limits=("max_state", "pass_state")),
    "causal_conv1d": KernelSpec(
        required={"forward": ("x", "weight", "bias", "silu", "reverse"),
                  "backward": ("x", "weight", "bias", "dout", "silu", "reverse")},
        optional={"bi_forward": ("x", "weight", "bias", "silu"),
                  "bi_backward": ("x", "weight", "bias", "dout", "silu")},
        limits=("max_width",)),
    "state_update": KernelSpec(
        required={"forward": ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias", "dt_softplus")},
        optional={}, limits=("max_state",)),
    "conv_update": KernelSpec(
        required={"forward": ("x", "conv_state", "weight", "bias", "silu", "cache_seqlens")},
        optional={}, limits=("max_width",)),
}


@dataclass(frozen=True)
class Impl:
    """A loaded backend module of a kernel: the dispatch table's entry."""
    module: ModuleType
    caps: Capabilities
    forward: Callable
    backward: Optional[Callable] = None  # the inference steps have none
    bi_forward: Optional[Callable] = None
    bi_backward: Optional[Callable] = None

    @property
    def bidirectional(self) -> bool:
        """Runs both ViM directions in one launch (bi_forward / bi_backward)."""
        return self.bi_forward is not None


def _entry(module: ModuleType, name: str, params: tuple) -> Optional[Callable]:
    fn = getattr(module, name, None)
    if fn is None:
        return None
    if not callable(fn):
        raise ContractError(f"{module.__name__}.{name} must be a function, got {type(fn).__name__}")
    got = tuple(inspect.signature(fn).parameters)
    if got != params:
        raise ContractError(f"{module.__name__}.{name} must take ({', '.join(params)}), "
                            f"got ({', '.join(got)})")
    return fn


def load(kernel: str, module: ModuleType) -> Impl:
    """Check ``module`` against the contract of ``kernel`` and return its entry points and CAPS."""
    spec = SPECS[kernel]
    where = module.__name__
    entries = {}
    for name, params in spec.required.items():
        entries[name] = _entry(module, name, params)
        if entries[name] is None:
            raise ContractError(f"{where} has no {name}(): every backend module of {kernel} "
                                f"provides {', '.join(spec.required)}")
    optional = {name: _entry(module, name, params) for name, params in spec.optional.items()}
    present = [name for name, fn in optional.items() if fn is not None]
    if present and len(present) != len(optional):
        missing = sorted(set(optional) - set(present))
        raise ContractError(f"{where} provides {', '.join(present)} without {', '.join(missing)}: "
                            "these entry points come together")
    caps = getattr(module, "CAPS", None)
    if not isinstance(caps, Capabilities):
        raise ContractError(f"{where}.CAPS must be a vimd_kernels.backend.Capabilities, "
                            f"got {type(caps).__name__}")
    for name in LIMITS:
        if getattr(caps, name) is not None and name not in spec.limits:
            raise ContractError(f"{where}.CAPS.{name} does not apply to {kernel} "
                                f"(its limits: {', '.join(spec.limits) or 'none'})")
    return Impl(module, caps, **entries, **{k: v for k, v in optional.items() if v is not None})

