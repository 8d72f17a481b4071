"""causal_conv1d 1.x (``causal_conv1d`` / ``causal_conv1d.causal_conv1d_interface``) on vimd's ops.

``causal_conv1d_fn`` runs vimd's ``causal_conv1d_fn``; ``initial_states`` (batch, dim, width-1) are
the inputs before x (the conv runs on them concatenated in front of x, so gradients reach them) and
``return_final_states`` also returns the last width-1 inputs, (batch, dim, width-1), written into
``final_states_out`` when given. ``seq_idx`` (packed sequences) raises NotImplementedError.
``causal_conv1d_update`` is plain PyTorch (float32 math, every device): x holds the next token(s),
``conv_state`` (batch, dim, state_len >= width-1) is updated in place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vimd_kernels import causal_conv1d_fn as _conv
from vimd_kernels import causal_conv1d_ref as _conv_ref


def _activation(activation):
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError("activation must be None, silu, or swish")
    return activation


def _with_states(conv, x, weight, bias, initial_states, return_final_states, final_states_out,
                 activation):
    width = weight.shape[-1]
    if initial_states is not None:
        want = (x.shape[0], x.shape[1], width - 1)
        if tuple(initial_states.shape) != want:
            raise ValueError(f"initial_states must have shape {want} (batch, dim, width - 1), "
                             f"got {tuple(initial_states.shape)}")
        x = torch.cat([initial_states.to(x.dtype), x], dim=-1)
    out = conv(x, weight, bias, _activation(activation))
    if initial_states is not None:
        out = out[..., width - 1:]
    if not return_final_states:
        return out
    final = F.pad(x, (width - 1 - x.shape[-1], 0))  # the last width-1 inputs, zeros before the start
    if final_states_out is not None:
        final = final_states_out.copy_(final)
    return out, final


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None,
                     return_final_states=False, final_states_out=None, activation=None):
    """x (batch, dim, L), weight (dim, width) -> out (batch, dim, L) [, final_states]."""
    if seq_idx is not None:
        raise NotImplementedError("seq_idx (several sequences packed in one row) is not supported "
                                  "by vimd's causal_conv1d; run the sequences as separate rows")
    return _with_states(_conv, x, weight, bias, initial_states, return_final_states,
                        final_states_out, activation)


def causal_conv1d_ref(x, weight, bias=None, initial_states=None, return_final_states=False,
                      final_states_out=None, activation=None):
    return _with_states(_conv_ref, x, weight, bias, initial_states, return_final_states,
                        final_states_out, activation)


def _window(x, conv_state, width: int, cache_seqlens):
    """(conv_state's inputs the conv needs, x) along L, and conv_state updated in place; with
    cache_seqlens (batch,) conv_state is a circular buffer written from cache_seqlens % state_len."""
    state_len, seqlen, dim = conv_state.shape[-1], x.shape[-1], x.shape[1]
    if cache_seqlens is None:
        x_new = torch.cat([conv_state.to(x.dtype), x], dim=-1)
        conv_state.copy_(x_new[..., -state_len:])
        return x_new

    def cols(offsets):  # per row: (offsets + cache_seqlens) % state_len, expanded over dim
        idx = torch.remainder(offsets[None] + cache_seqlens[:, None].long(), state_len)
        return idx[:, None].expand(-1, dim, -1)

    arange = lambda a, b: torch.arange(a, b, device=x.device)  # noqa: E731
    x_new = torch.cat([conv_state.gather(2, cols(arange(1 - width, 0))).to(x.dtype), x], dim=-1)
    conv_state.scatter_(2, cols(arange(0, seqlen)), x.to(conv_state.dtype))
    return x_new


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """x (batch, dim) or (batch, dim, seqlen) -> the same shape; conv_state updated in place.

    ``conv_state_indices`` (batch,): row b uses conv_state[conv_state_indices[b]].
    """
    _activation(activation)
    weight = weight.squeeze(1) if weight.dim() == 3 else weight
    dim, width = weight.shape
    if conv_state.shape[-1] < width - 1:
        raise ValueError(f"conv_state must keep at least width - 1 = {width - 1} inputs, "
                         f"got shape {tuple(conv_state.shape)}")
    unsqueeze = x.dim() == 2
    if unsqueeze:
        x = x.unsqueeze(-1)
    state = conv_state if conv_state_indices is None else conv_state[conv_state_indices.long()]
    ct = torch.promote_types(x.dtype, torch.float32)
    x_new = _window(x, state, width, cache_seqlens).to(ct)
    out = F.conv1d(x_new, weight.to(ct).unsqueeze(1), None if bias is None else bias.to(ct),
                   groups=dim)[..., -x.shape[-1]:]
    if conv_state_indices is not None:
        conv_state[conv_state_indices.long()] = state
    out = (out if activation is None else F.silu(out)).to(x.dtype)
    return out.squeeze(-1) if unsqueeze else out


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None):
    return causal_conv1d_update(x, conv_state, weight, bias, activation, cache_seqlens)


__all__ = ["causal_conv1d_fn", "causal_conv1d_ref", "causal_conv1d_update",
           "causal_conv1d_update_ref"]
