"""mamba_ssm ``mamba_ssm.ops.triton.selective_state_update``: one decoding step of the selective
scan, ``state`` updated in place. Plain PyTorch with the kernel's float32 math, on every device.

Shapes (upstream's): state (batch, dim, N) or (batch, nheads, dim, N); x, dt, z (batch, dim) or
(batch, nheads, dim); A (dim, N) or (nheads, dim, N); B, C (batch, N) or (batch, ngroups, N);
D, dt_bias (dim,) or (nheads, dim). ``state_batch_indices`` (batch,): row b updates
state[state_batch_indices[b]].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _heads(t, ndim: int, axis: int):
    """Upstream's one-head forms leave the nheads axis out: put it back."""
    return t if t is None or t.dim() == ndim else t.unsqueeze(axis)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None):
    """h = exp(dt A) h + dt B x;  out = (<h, C> + D x) * silu(z), out in x's dtype."""
    has_heads = state.dim() > 3
    state, x, dt, z = _heads(state, 4, 1), _heads(x, 3, 1), _heads(dt, 3, 1), _heads(z, 3, 1)
    A, B, C = _heads(A, 3, 0), _heads(B, 3, 1), _heads(C, 3, 1)
    D, dt_bias = _heads(D, 2, 0), _heads(dt_bias, 2, 0)
    nheads, ngroups = x.shape[1], B.shape[1]
    if nheads % ngroups or tuple(B.shape) != tuple(C.shape):
        raise ValueError(f"B and C must both be (batch, ngroups, N) with ngroups dividing "
                         f"nheads={nheads}, got {tuple(B.shape)} and {tuple(C.shape)}")
    ct = torch.promote_types(x.dtype, torch.float32)
    dt = dt.to(ct) + (dt_bias.to(ct) if dt_bias is not None else 0)
    if dt_softplus:
        dt = F.softplus(dt)
    B, C = (X.to(ct).repeat_interleave(nheads // ngroups, dim=1)[:, :, None] for X in (B, C))
    rows = state if state_batch_indices is None else state[state_batch_indices.long()]
    h = rows.to(ct) * torch.exp(dt[..., None] * A.to(ct)) + (dt * x.to(ct))[..., None] * B
    if state_batch_indices is None:
        state.copy_(h)
    else:
        state[state_batch_indices.long()] = h.to(state.dtype)
    out = (h * C).sum(-1)
    if D is not None:
        out = out + x.to(ct) * D.to(ct)
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(x.dtype)
    return out if has_heads else out.squeeze(1)


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False):
    return selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


__all__ = ["selective_state_update", "selective_state_update_ref"]
