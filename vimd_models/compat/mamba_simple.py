"""mamba_ssm ``mamba_ssm.modules.mamba_simple`` (1.x/2.x, with hustvl/Vim's bidirectional options):
``Mamba`` with upstream's constructor, and ``Block``.

``Mamba`` is vimd's mixer (``vimd_models.layers.Mamba``, the same module and parameter names)
under upstream's exact signature; ``vimd_models.layers.set_backend`` picks its kernels.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from vimd_kernels.compat.layer_norm import RMSNorm as _RMSNorm
from vimd_kernels.compat.layernorm import RMSNorm, layer_norm_fn, rms_norm_fn

from ..layers import mamba as _mamba


class Mamba(_mamba.Mamba):
    """``if_devide_out`` is the spelling of ``if_divide_out`` in Vim's earlier releases."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001,
                 dt_max=0.1, dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True,
                 bias=False, use_fast_path=True, layer_idx=None, device=None, dtype=None,
                 bimamba_type="none", if_divide_out=False, init_layer_scale=None, *,
                 if_devide_out=None):
        if if_devide_out is not None:
            if_divide_out = if_devide_out
        super().__init__(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init,
                         dt_scale, dt_init_floor, conv_bias, bias, use_fast_path, layer_idx, device,
                         dtype, bimamba_type, if_divide_out, init_layer_scale)


class Block(nn.Module):
    """Add -> norm -> mixer, returning (mixer output, residual); the first block gets residual=None.
    ``fused_add_norm`` runs the add and the norm as one ``rms_norm_fn`` / ``layer_norm_fn``."""

    def __init__(self, dim, mixer_cls, norm_cls=nn.LayerNorm, fused_add_norm=False,
                 residual_in_fp32=False):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.mixer = mixer_cls(dim)
        self.norm = norm_cls(dim)
        if fused_add_norm and not isinstance(self.norm, (nn.LayerNorm, _RMSNorm)):
            raise TypeError("Only LayerNorm and RMSNorm are supported for fused_add_norm, "
                            f"got {type(self.norm).__name__}")

    def forward(self, hidden_states: Tensor, residual: Optional[Tensor] = None, inference_params=None):
        if not self.fused_add_norm:
            residual = (hidden_states + residual) if residual is not None else hidden_states
            hidden_states = self.norm(residual.to(dtype=self.norm.weight.dtype))
            if self.residual_in_fp32:
                residual = residual.to(torch.float32)
        else:
            fn = rms_norm_fn if isinstance(self.norm, _RMSNorm) else layer_norm_fn
            hidden_states, residual = fn(hidden_states, self.norm.weight, self.norm.bias,
                                         residual=residual, prenorm=True,
                                         residual_in_fp32=self.residual_in_fp32, eps=self.norm.eps)
        hidden_states = self.mixer(hidden_states, inference_params=inference_params)
        return hidden_states, residual

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return self.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)


__all__ = ["Mamba", "Block", "RMSNorm", "layer_norm_fn", "rms_norm_fn"]
