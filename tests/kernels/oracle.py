"""Float64 oracles written independently of vimd_kernels' references.

The selective scan walks L one step at a time, indexing B/C per step (no expansion to (b, d, N, L)
tensors, no flips: ``reverse`` walks t from L-1 down to 0).  Gradients come from autograd on these
float64 graphs, so they check every backend's hand-written backward against plain calculus.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _softplus(x: Tensor) -> Tensor:
    # log(1 + e^x), written out; for large x the identity softplus(x) ~= x avoids overflow.
    return torch.where(x > 30, x, torch.log1p(torch.exp(torch.clamp(x, max=30))))


def _silu(x: Tensor) -> Tensor:
    return x / (1 + torch.exp(-x))


def _bc_step(X: Tensor, t: int, batch: int, dim: int, N: int) -> Tensor:
    """The (batch, dim, N) slice of B or C that channel d sees at step t."""
    if X.dim() == 2:  # constant (dim, N)
        return X.unsqueeze(0).expand(batch, dim, N)
    if X.dim() == 3:  # variable (batch, N, L): one vector shared by all channels
        return X[:, :, t].unsqueeze(1).expand(batch, dim, N)
    groups = X.shape[1]  # grouped (batch, G, N, L): channel d reads group d // (dim // G)
    group_of = torch.arange(dim, device=X.device) // (dim // groups)
    return X[:, :, :, t][:, group_of, :]


def scan64(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
           delta_softplus=False, reverse=False) -> tuple[Tensor, Tensor]:
    """Selective scan in float64: returns (out (b, d, L) float64, last_state (b, d, N) float64).

    Inputs may be any float dtype; they are promoted to float64 (pass float64 leaves to get grads).
    """
    f = lambda t: None if t is None else t.to(torch.float64)  # noqa: E731
    u, delta, A, B, C, D, z, delta_bias, initial_state = map(
        f, (u, delta, A, B, C, D, z, delta_bias, initial_state))
    batch, dim, L = u.shape
    N = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.view(1, dim, 1)
    if delta_softplus:
        delta = _softplus(delta)
    h = initial_state if initial_state is not None else u.new_zeros(batch, dim, N)
    ys = [None] * L
    steps = range(L - 1, -1, -1) if reverse else range(L)
    for t in steps:
        dt = delta[:, :, t].unsqueeze(-1)  # (b, d, 1)
        h = torch.exp(dt * A) * h + dt * _bc_step(B, t, batch, dim, N) * u[:, :, t].unsqueeze(-1)
        y = (h * _bc_step(C, t, batch, dim, N)).sum(-1)
        if D is not None:
            y = y + D * u[:, :, t]
        if z is not None:
            y = y * _silu(z[:, :, t])
        ys[t] = y
    return torch.stack(ys, dim=-1), h


def conv64(x, weight, bias=None, silu=False, reverse=False) -> Tensor:
    """Depthwise causal conv1d in float64 by explicit shifted sums (anti-causal when reverse)."""
    x = x.to(torch.float64)
    if weight.dim() == 3:
        weight = weight[:, 0]
    weight = weight.to(torch.float64)
    width = weight.shape[1]
    L = x.shape[-1]
    out = torch.zeros_like(x)
    for k in range(width):
        shift = width - 1 - k  # tap k reads x[t - shift] (x[t + shift] when reverse)
        if shift >= L:
            continue
        if reverse:
            out[..., :L - shift] = out[..., :L - shift] + weight[:, k, None] * x[..., shift:]
        else:
            out[..., shift:] = out[..., shift:] + weight[:, k, None] * x[..., :L - shift]
    if bias is not None:
        out = out + bias.to(torch.float64)[:, None]
    return _silu(out) if silu else out
