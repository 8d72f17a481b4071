"""Pure-PyTorch selective scan: the oracle every backend is checked against.

Math in float32 (float64 when the inputs are float64), a plain sequential walk over L.
``forward``/``backward`` adapt it to the backend signature shared by every
``vimd_kernels/selective_scan/<backend>.py``: ``backward`` is hand-derived (recompute the states,
walk back over L), with no torch.func inside the custom op.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities

CAPS = Capabilities(dtypes=FLOAT_DTYPES, deterministic=True)


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


def _reduce_bc(g: Tensor, X: Tensor) -> Tensor:
    """Fold a (batch, dim, N, L) gradient back onto B/C's own layout."""
    if X.dim() == 2:  # constant (dim, N)
        return g.sum(dim=(0, 3))
    if X.dim() == 3:  # variable (batch, N, L)
        return g.sum(dim=1)
    batch, groups, N, L = X.shape
    return g.view(batch, groups, -1, N, L).sum(dim=2)


def backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
             delta_softplus: bool, reverse: bool):
    """Hand-derived gradients: states recomputed forward, then one walk back over L.

    Written without torch.func/autograd so it runs inside the custom op under any dispatch mode
    (opcheck, fake tensors, AOT tracing).  reverse is handled by flipping, as in the forward.
    """
    ct = _compute_dtype(u)
    batch, dim, L = u.shape
    flip = (lambda t: t.flip(-1)) if reverse else (lambda t: t)  # noqa: E731
    uc, g_out = flip(u).to(ct), flip(dout).to(ct)
    raw = flip(delta).to(ct)
    if delta_bias is not None:
        raw = raw + delta_bias.to(ct)[:, None]
    dt = F.softplus(raw) if delta_softplus else raw
    Ac = A.to(ct)
    Bf = flip(B) if B.dim() >= 3 else B
    Cf = flip(C) if C.dim() >= 3 else C

    def per_channel(X):  # (batch, dim, N, L) view of B or C in compute dtype
        X = X.to(ct)
        if X.dim() == 2:
            return X[None, :, :, None].expand(batch, dim, X.shape[1], L)
        if X.dim() == 3:
            return X[:, None].expand(batch, dim, X.shape[1], L)
        return X.repeat_interleave(dim // X.shape[1], dim=1)

    Bx, Cx = per_channel(Bf), per_channel(Cf)
    N = Ac.shape[1]
    decay = torch.exp(dt[:, :, None, :] * Ac[None, :, :, None])  # (b, d, N, L)
    drive = dt[:, :, None, :] * Bx * uc[:, :, None, :]
    h0 = initial_state.to(ct) if initial_state is not None else uc.new_zeros(batch, dim, N)
    hs = torch.empty(batch, dim, N, L, dtype=ct, device=uc.device)
    h = h0
    for t in range(L):
        h = decay[..., t] * h + drive[..., t]
        hs[..., t] = h
    y = (hs * Cx).sum(dim=2)
    if D is not None:
        y = y + D.to(ct)[:, None] * uc

    dz = None
    if z is not None:
        zc = flip(z).to(ct)
        sig = torch.sigmoid(zc)
        dz = g_out * y * sig * (1 + zc * (1 - sig))
        dy = g_out * zc * sig
    else:
        dy = g_out
    dC = hs * dy[:, :, None, :]
    g = dlast_state.to(ct) if dlast_state is not None else h0.new_zeros(batch, dim, N)
    d_drive = torch.empty_like(hs)
    d_decay = torch.empty_like(hs)
    for t in range(L - 1, -1, -1):
        g = g + dy[:, :, t, None] * Cx[..., t]
        d_drive[..., t] = g
        h_prev = hs[..., t - 1] if t > 0 else h0
        d_decay[..., t] = g * h_prev
        g = g * decay[..., t]
    d_h0 = g
    d_dA = d_decay * decay  # gradient w.r.t. dt*A
    ddt = (d_dA * Ac[None, :, :, None]).sum(dim=2) + (d_drive * Bx * uc[:, :, None, :]).sum(dim=2)
    dA = (d_dA * dt[:, :, None, :]).sum(dim=(0, 3))
    dBx = d_drive * dt[:, :, None, :] * uc[:, :, None, :]
    du = (d_drive * dt[:, :, None, :] * Bx).sum(dim=2)
    dD = None
    if D is not None:
        du = du + dy * D.to(ct)[:, None]
        dD = (dy * uc).sum(dim=(0, 2))
    draw = ddt * torch.sigmoid(raw) if delta_softplus else ddt
    ddelta_bias = draw.sum(dim=(0, 2)) if delta_bias is not None else None
    dB = _reduce_bc(dBx, Bf)
    dC = _reduce_bc(dC, Cf)
    if B.dim() >= 3:
        dB = flip(dB)
    if C.dim() >= 3:
        dC = flip(dC)

    def cast(g, like):
        return None if like is None else g.to(like.dtype)

    return (cast(flip(du), u), cast(flip(draw), delta), cast(dA, A), cast(dB, B), cast(dC, C),
            cast(dD, D), cast(flip(dz) if dz is not None else None, z), cast(ddelta_bias, delta_bias),
            cast(d_h0, initial_state))
