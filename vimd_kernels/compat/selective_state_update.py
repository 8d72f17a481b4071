"""mamba_ssm ``mamba_ssm.ops.triton.selective_state_update``: one decoding step of the selective
scan, ``state`` updated in place, on vimd's ``selective_state_update`` op (every backend).

Shapes (upstream's): state (batch, dim, N) or (batch, nheads, dim, N); x, dt, z (batch, dim) or
(batch, nheads, dim); A (dim, N) or (nheads, dim, N); B, C (batch, N) or (batch, ngroups, N), head h
reading group h // (nheads / ngroups); D, dt_bias (dim,) or (nheads, dim). The head form runs as
one op over nheads * dim channels (B/C then grouped over the channels). ``state_batch_indices``
(batch,): row b updates state[state_batch_indices[b]]. A, D and dt_bias enter the op in float32
(float64 with float64 x), B and C in x's dtype or float32.
"""
from __future__ import annotations

import torch

from vimd_kernels import selective_state_update_ref as _ref
from vimd_kernels.ops import selective_state_update as _op


def _param(t, x):
    """A, D, dt_bias in the op's parameter dtype."""
    return None if t is None else t.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def _bc(t, x):
    """B, C in x's dtype or float32 (as upstream, any float dtype is accepted)."""
    return t if t.dtype in (x.dtype, torch.float32) else t.to(x.dtype)


def _flat(state):
    """(batch, nheads, dim, N) -> a (batch, nheads * dim, N) view, or a copy to write back."""
    b, h, d, n = state.shape
    try:
        return state.view(b, h * d, n), False
    except RuntimeError:
        return state.reshape(b, h * d, n), True


def _step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, op):
    """The op on state (batch, [nheads,] dim, N) with upstream's argument forms."""
    if state.dim() == 3:
        return op(state, x, dt, _param(A, x), _bc(B, x), _bc(C, x), _param(D, x), z,
                  _param(dt_bias, x), dt_softplus)
    batch, nheads, dim, N = state.shape
    flat = lambda t: None if t is None else t.reshape(batch, nheads * dim)  # noqa: E731
    vec = lambda t: None if t is None else t.reshape(nheads * dim)  # noqa: E731
    work, copied = _flat(state)
    out = op(work, flat(x), flat(dt), _param(A.reshape(nheads * dim, N), x), _bc(B, x), _bc(C, x),
             _param(vec(D), x), flat(z), _param(vec(dt_bias), x), dt_softplus)
    if copied:
        state.copy_(work.view(state.shape))
    return out.view(batch, nheads, dim)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None):
    """h = exp(dt A) h + dt B x;  out = (<h, C> + D x) * silu(z), out in x's dtype."""
    if state_batch_indices is None:
        return _step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, _op)
    idx = state_batch_indices.long()
    rows = state[idx]
    out = _step(rows, x, dt, A, B, C, D, z, dt_bias, dt_softplus, _op)
    state[idx] = rows
    return out


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False):
    return _step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, _ref)


__all__ = ["selective_state_update", "selective_state_update_ref"]
