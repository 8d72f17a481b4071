"""Pure-PyTorch selective state update (one decoding step of the selective scan): the oracle for
every backend of ``selective_state_update``.

    dt = softplus(dt + dt_bias)              (each part when asked)
    state = exp(dt A) * state + dt B x       (in place, in state's dtype)
    out = (<state, C> + D x) * silu(z)       (in x's dtype)

Math in float32 (float64 for float64 x); ``out`` uses the updated state before it is rounded to
state's dtype. B and C are (batch, N) or grouped (batch, G, N), channel d reading group
d // (dim / G), as the scan's grouped B/C.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities

CAPS = Capabilities(dtypes=FLOAT_DTYPES)


def _per_channel(X: Tensor, dim: int, ct: torch.dtype) -> Tensor:
    """B or C as (batch, dim, N) in the compute type."""
    X = X.to(ct)
    if X.dim() == 2:
        return X[:, None, :]
    return X.repeat_interleave(dim // X.shape[1], dim=1)


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False, *, backend=None):
    """state (batch, dim, N) updated in place; returns out (batch, dim). ``backend`` is ignored."""
    del backend
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    dim = x.shape[1]
    dt = dt.to(ct)
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    if dt_softplus:
        dt = F.softplus(dt)
    h = (state.to(ct) * torch.exp(dt[..., None] * A.to(ct))
         + (dt * x.to(ct))[..., None] * _per_channel(B, dim, ct))
    state.copy_(h)
    out = (h * _per_channel(C, dim, ct)).sum(-1)
    if D is not None:
        out = out + x.to(ct) * D.to(ct)
    if z is not None:
        out = out * F.silu(z.to(ct))
    return out.to(x.dtype)


def forward(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
            D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
            dt_softplus: bool) -> Tensor:
    with torch.no_grad():
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
