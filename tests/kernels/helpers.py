"""Shared pieces of the kernel tests: backend parametrisation and fresh random inputs."""
from __future__ import annotations

import math
import os
from dataclasses import KW_ONLY, dataclass
from typing import Optional

import pytest
import torch

from vimd_kernels.registry import kernel_available

TESTED_BACKENDS = ("ref", "cpu", "triton")


def backend_param(name: str, kernel: str, *case, tiny: bool = True):
    """pytest.param for ``name``: skipped when the backend (or its module for ``kernel``) is missing;
    Triton is marked ``interpret`` and only ever given tiny cases (the interpreter is ~1e3x slower)."""
    marks = []
    if name == "triton":
        marks.append(pytest.mark.interpret)
    if not kernel_available(kernel, name):
        marks.append(pytest.mark.skip(reason=f"backend {name!r} has no {kernel} here"))
    elif name == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        # these tests use CPU tensors: Triton runs them only in the interpreter, even on a GPU machine
        marks.append(pytest.mark.skip(reason="CPU tensors: Triton needs TRITON_INTERPRET=1"))
    flat = [x for c in case for x in (c if isinstance(c, tuple) else (c,))]
    ident = "-".join([name] + [str(c) for c in flat])
    return pytest.param(name, *case, marks=marks, id=ident)


def backend_params(kernel: str, cases=None, is_tiny=lambda c: True):
    """Every tested backend crossed with ``cases``; Triton only with the cases ``is_tiny`` accepts."""
    out = []
    for name in TESTED_BACKENDS:
        if cases is None:
            out.append(backend_param(name, kernel))
            continue
        for case in cases:
            if name == "triton" and not is_tiny(case):
                continue
            out.append(backend_param(name, kernel, case))
    return out


@dataclass(frozen=True)
class KernelCase:
    """What every kernel test case has: the (batch, dim, L) shape, then keyword-only the direction
    and the dtype of the input."""
    batch: int = 2
    dim: int = 4
    L: int = 7
    _: KW_ONLY
    reverse: bool = False
    dtype: torch.dtype = torch.float32


# ----------------------------------------------------------------------------- scan inputs

@dataclass(frozen=True)
class ScanCase(KernelCase):
    """One selective-scan configuration.  ``b_kind``/``c_kind``: 'const', 'var' or 'g<G>'."""
    N: int = 4
    b_kind: str = "var"
    c_kind: str = "var"
    D: bool = True
    z: bool = True
    delta_bias: bool = True
    softplus: bool = True
    initial_state: bool = False
    bc_dtype: Optional[torch.dtype] = None  # B/C dtype when it differs from u's (e.g. fp32 B with fp16 u)

    def __str__(self) -> str:
        opts = "".join(k[0] if getattr(self, k) else "-" for k in
                       ("D", "z", "delta_bias", "softplus", "initial_state", "reverse"))
        dt = str(self.dtype).replace("torch.", "")
        return f"b{self.batch}d{self.dim}L{self.L}N{self.N}-B{self.b_kind}C{self.c_kind}-{opts}-{dt}"


def _bc(kind: str, batch: int, dim: int, N: int, L: int, dtype, gen) -> torch.Tensor:
    if kind == "const":
        return torch.randn(dim, N, generator=gen).to(dtype)
    if kind == "var":
        return torch.randn(batch, N, L, generator=gen).to(dtype)
    groups = int(kind[1:])
    return torch.randn(batch, groups, N, L, generator=gen).to(dtype)


def scan_inputs(case: ScanCase, seed: int = 0) -> dict:
    """Fresh random inputs in realistic ranges (A = -exp(A_log) < 0, positive step sizes)."""
    gen = torch.Generator().manual_seed(seed)
    b, d, L, N, dt = case.batch, case.dim, case.L, case.N, case.dtype
    pdt = torch.float64 if dt == torch.float64 else torch.float32
    bct = case.bc_dtype or dt
    a_log = torch.log(torch.arange(1, N + 1, dtype=pdt)).repeat(d, 1) + 0.1 * torch.rand(d, N, generator=gen, dtype=pdt)
    if case.softplus:
        delta = (0.5 * torch.randn(b, d, L, generator=gen) - 1.0).to(dt)
    else:  # used as the step size directly: keep it positive
        delta = (0.5 * torch.rand(b, d, L, generator=gen) + 0.05).to(dt)
    return dict(
        u=torch.randn(b, d, L, generator=gen).to(dt),
        delta=delta,
        A=-torch.exp(a_log),
        B=_bc(case.b_kind, b, d, N, L, bct, gen),
        C=_bc(case.c_kind, b, d, N, L, bct, gen),
        D=torch.randn(d, generator=gen, dtype=pdt) if case.D else None,
        z=torch.randn(b, d, L, generator=gen).to(dt) if case.z else None,
        delta_bias=(0.1 * torch.rand(d, generator=gen, dtype=pdt) + 0.01) if case.delta_bias else None,
        initial_state=torch.randn(b, d, N, generator=gen, dtype=pdt) if case.initial_state else None,
    )


SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def leaves(inputs: dict, dtype=None) -> dict:
    """Detached copies requiring grad (optionally cast), None kept as None."""
    out = {}
    for k, v in inputs.items():
        if v is None:
            out[k] = None
            continue
        t = v.detach().clone() if dtype is None else v.detach().to(dtype)
        out[k] = t.requires_grad_(True)
    return out


def reduction_scale(n: int) -> float:
    """atol multiplier for a gradient summed over ``n`` terms: rounding errors of a sum grow like
    sqrt(n) (random walk), normalised so that sums of up to 64 terms keep the table's atol."""
    return max(1.0, math.sqrt(n / 64))


def scan_grad_scale(case: ScanCase, name: str, X: Optional[torch.Tensor] = None) -> float:
    """How many terms each gradient entry of ``name`` sums (for reduction_scale)."""
    b, d, L = case.batch, case.dim, case.L
    if name in ("A", "D", "delta_bias"):
        return reduction_scale(b * L)
    if name in ("B", "C"):
        if X is not None and X.dim() == 2:
            return reduction_scale(b * L)
        if X is not None and X.dim() == 4:
            return reduction_scale(d // X.shape[1])
        return reduction_scale(d)
    return 1.0
