"""causal_conv1d 1.x (``causal_conv1d`` / ``causal_conv1d.causal_conv1d_interface``) on vimd's ops.

``causal_conv1d_fn`` runs vimd's ``causal_conv1d_fn``; ``initial_states`` (batch, dim, width-1) are
the inputs before x (the conv runs on them concatenated in front of x, so gradients reach them) and
``return_final_states`` also returns the last width-1 inputs, (batch, dim, width-1), written into
``final_states_out`` when given. ``seq_idx`` (packed sequences) raises NotImplementedError.
``causal_conv1d_update`` runs vimd's ``causal_conv1d_update`` op (every backend): x holds the next
token(s), ``conv_state`` (batch, dim, state_len >= width-1) is updated in place, as a circular
buffer with ``cache_seqlens``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vimd_kernels import causal_conv1d_fn as _conv
from vimd_kernels import causal_conv1d_ref as _conv_ref
from vimd_kernels import causal_conv1d_update_ref as _conv_update_ref
from vimd_kernels.ops import causal_conv1d_update as _conv_update


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


def _param(t, x):
    """weight / bias in x's dtype or the op's parameter dtype (upstream takes any float dtype)."""
    if t is None or t.dtype == x.dtype:
        return t
    return t.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def _update(op, x, conv_state, weight, bias, activation, cache_seqlens):
    """The op with conv_state in x's dtype (a state of another dtype is stepped in a copy)."""
    work = conv_state if conv_state.dtype == x.dtype else conv_state.to(x.dtype)
    out = op(x, work, _param(weight, x), _param(bias, x), _activation(activation), cache_seqlens)
    if work is not conv_state:
        conv_state.copy_(work)
    return out


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """x (batch, dim) or (batch, dim, seqlen) -> the same shape; conv_state updated in place.

    ``conv_state_indices`` (batch,): row b uses conv_state[conv_state_indices[b]].
    """
    if conv_state_indices is None:
        return _update(_conv_update, x, conv_state, weight, bias, activation, cache_seqlens)
    idx = conv_state_indices.long()
    rows = conv_state[idx]
    out = _update(_conv_update, x, rows, weight, bias, activation, cache_seqlens)
    conv_state[idx] = rows
    return out


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None):
    return _update(_conv_update_ref, x, conv_state, weight, bias, activation, cache_seqlens)


__all__ = ["causal_conv1d_fn", "causal_conv1d_ref", "causal_conv1d_update",
           "causal_conv1d_update_ref"]
