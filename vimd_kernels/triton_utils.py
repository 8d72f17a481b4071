"""Small helpers shared by the Triton kernels (selective scan, causal conv1d).

Imported only by the Triton backend modules, so ``import vimd_kernels`` never needs triton.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Floating-point contraction (a*b + c as one FMA), set on every launch rather than left to
# TRITON_DEFAULT_FP_FUSION: the kernels' accuracy is checked against the references with it on.
FP_FUSION = True


def pow2(n: int, at_least: int = 1) -> int:
    """Smallest power of two >= max(n, at_least)."""
    return max(triton.next_power_of_2(max(int(n), 1)), at_least)


def rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A (batch, dim, L) operand as rows of L contiguous steps with its channels one after another:
    (t, batch stride) when it already is (a contiguous tensor, or a channel slice of one such as
    x / z inside the mixer's xz), else (a contiguous copy, dim * L)."""
    batch, dim, L = t.shape
    ok = ((L == 1 or t.stride(2) == 1) and (dim == 1 or t.stride(1) == L)
          and (batch == 1 or t.stride(0) >= dim * L))
    if not ok:
        t = t.contiguous()
    return t, (t.stride(0) if batch > 1 else dim * L)


def compute_dtype(t: torch.Tensor) -> tuple[torch.dtype, "tl.dtype"]:
    """float64 math for float64 inputs (gradcheck), float32 math for everything else."""
    if t.dtype == torch.float64:
        return torch.float64, tl.float64
    return torch.float32, tl.float32


@triton.jit
def _index_probe_kernel(out_ptr, n):
    acc = 0
    for _ in range(tl.program_id(0), n):  # a loop bound from a runtime scalar, as every kernel has
        acc += 1
    tl.store(out_ptr, acc)


def interpreter_problem() -> str | None:
    """Why the Triton interpreter here cannot run the kernels (None when it can), from one tiny launch.

    Known case: the interpreter of triton 3.6 and older keeps scalars as 1-element arrays and
    turns them into Python ints with int(), which NumPy 2.4 refuses, so every loop with a runtime
    bound fails deep inside triton (triton-lang/triton#9171; later releases squeeze first)."""
    import numpy
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _index_probe_kernel[(1,)](out, 3)
    except Exception as e:  # noqa: BLE001 - any failure here is the interpreter's, reported whole
        return (f"triton {triton.__version__}'s interpreter cannot run a loop with a runtime bound "
                f"under NumPy {numpy.__version__} ({type(e).__name__}: {e}); with triton <= 3.6 this is "
                f"triton-lang/triton#9171: install numpy<2.4 or a newer triton")
    if int(out.item()) != 3:
        return f"triton {triton.__version__}'s interpreter counted {int(out.item())} loop steps, not 3"
    return None


@triton.jit
def step_addr(p, L, REVERSE: tl.constexpr):
    """Address of step p of a length-L walk: L-1-p when REVERSE (the anti-causal direction, read
    mirrored instead of flipped), else p."""
    if REVERSE:
        return L - 1 - p
    else:
        return p


@triton.jit
def softplus(x):
    """torch.nn.functional.softplus with its default threshold of 20."""
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))
