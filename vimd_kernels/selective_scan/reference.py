"""Pure-PyTorch selective scan: the oracle every backend is checked against.

Math in float32 (float64 when the inputs are float64), a plain sequential walk over L.
``forward``/``backward`` adapt it to the backend signature shared by every
``vimd_kernels/selective_scan/<backend>.py``: ``backward`` recomputes through autograd.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _expand_bc(X: Tensor, dim: int, ct: torch.dtype) -> tuple[Tensor, str]:
    """Return X in compute dtype and an einsum tag: 'c' (dim, N), 'v' (b, N, L), 'g' (b, dim, N, L)."""
    X = X.to(ct)
    if X.dim() == 2:
        return X, "c"
    if X.dim() == 3:
        return X, "v"
    groups = X.shape[1]
    return X.repeat_interleave(dim // groups, dim=1), "g"


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, *, initial_state=None, reverse=False, backend=None):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t;  y_t = <h_t, C_t> + D u_t;  y *= silu(z).

    ``reverse=True`` is flip(f(flip(inputs))) along L; ``backend`` is accepted and ignored.
    """
    del backend
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    if reverse:
        u, delta = u.flip(-1), delta.flip(-1)
        z = z.flip(-1) if z is not None else None
        B = B.flip(-1) if B.dim() >= 3 else B
        C = C.flip(-1) if C.dim() >= 3 else C
    batch, dim, L = u.shape
    u = u.to(ct)
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(ct)
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(ct)
    B, b_kind = _expand_bc(B, dim, ct)
    C, c_kind = _expand_bc(C, dim, ct)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if b_kind == "c":
        delta_b_u = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    elif b_kind == "v":
        delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        delta_b_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    if initial_state is None:
        h = u.new_zeros((batch, dim, A.shape[1]))
    else:
        h = initial_state.to(ct)
    ys = []
    for t in range(L):
        h = delta_a[:, :, t] * h + delta_b_u[:, :, t]
        if c_kind == "c":
            ys.append(torch.einsum("bdn,dn->bd", h, C))
        elif c_kind == "v":
            ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
        else:
            ys.append(torch.einsum("bdn,bdn->bd", h, C[:, :, :, t]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    if reverse:
        out = out.flip(-1)
    return (out, h) if return_last_state else out


def forward(u, delta, A, B, C, D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
            initial_state: Optional[Tensor], delta_softplus: bool, reverse: bool) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True,
                                  initial_state=initial_state, reverse=reverse)


def backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
             delta_softplus: bool, reverse: bool):
    # torch.func.vjp re-enables autograd even inside a custom op's implementation.
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    present = [i for i, t in enumerate(inputs) if t is not None]

    def f(*ts):
        args = list(inputs)
        for i, t in zip(present, ts):
            args[i] = t
        return selective_scan_ref(*args[:8], delta_softplus, True, initial_state=args[8],
                                  reverse=reverse)

    (out, last), vjp = torch.func.vjp(f, *(inputs[i] for i in present))
    grads = vjp((dout, torch.zeros_like(last) if dlast_state is None else dlast_state))
    result = [None] * len(inputs)
    for i, g in zip(present, grads):
        result[i] = g
    return tuple(result)
