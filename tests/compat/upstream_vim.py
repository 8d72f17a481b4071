"""A tiny Vim-like model written against mamba_ssm's import paths only, as hustvl/Vim's
models_mamba.py is (prenorm blocks, fused add + RMSNorm, float32 residual, bidirectional "v2"
mixers with averaged directions). Importable once vimd_kernels.compat.install() has run."""
from functools import partial

import torch.nn as nn

from mamba_ssm.modules.mamba_simple import Block, Mamba
from mamba_ssm.utils.generation import GenerationMixin
from mamba_ssm.utils.hf import load_config_hf, load_state_dict_hf  # noqa: F401  (Vim imports them)

try:
    from mamba_ssm.ops.triton.layernorm import RMSNorm, layer_norm_fn, rms_norm_fn
except ImportError:
    RMSNorm, layer_norm_fn, rms_norm_fn = None, None, None


def create_block(d_model, d_state=4, layer_idx=None, bimamba_type="v2", if_divide_out=True,
                 rms_norm=True, fused_add_norm=True, residual_in_fp32=True):
    mixer_cls = partial(Mamba, d_state=d_state, layer_idx=layer_idx, bimamba_type=bimamba_type,
                        if_divide_out=if_divide_out)
    norm_cls = partial(nn.LayerNorm if not rms_norm else RMSNorm, eps=1e-5)
    return Block(d_model, mixer_cls, norm_cls=norm_cls, fused_add_norm=fused_add_norm,
                 residual_in_fp32=residual_in_fp32)


class TinyVim(nn.Module, GenerationMixin):
    def __init__(self, in_dim=6, d_model=16, depth=2, num_classes=3, bimamba_type="v2",
                 rms_norm=True, fused_add_norm=True, residual_in_fp32=True):
        super().__init__()
        self.fused_add_norm, self.residual_in_fp32 = fused_add_norm, residual_in_fp32
        self.embed = nn.Linear(in_dim, d_model)
        self.layers = nn.ModuleList(
            create_block(d_model, layer_idx=i, bimamba_type=bimamba_type, rms_norm=rms_norm,
                         fused_add_norm=fused_add_norm, residual_in_fp32=residual_in_fp32)
            for i in range(depth))
        self.norm_f = (nn.LayerNorm if not rms_norm else RMSNorm)(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, num_classes)

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return {i: layer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype, **kwargs)
                for i, layer in enumerate(self.layers)}

    def forward_features(self, x, inference_params=None):
        hidden_states, residual = self.embed(x), None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual, inference_params=inference_params)
        if not self.fused_add_norm:
            residual = (hidden_states + residual) if residual is not None else hidden_states
            return self.norm_f(residual.to(dtype=self.norm_f.weight.dtype))
        fused_add_norm_fn = rms_norm_fn if isinstance(self.norm_f, RMSNorm) else layer_norm_fn
        return fused_add_norm_fn(hidden_states, self.norm_f.weight, self.norm_f.bias,
                                 eps=self.norm_f.eps, residual=residual, prenorm=False,
                                 residual_in_fp32=self.residual_in_fp32)

    def forward(self, x, inference_params=None):
        feats = self.forward_features(x, inference_params)
        return self.head(feats[:, feats.shape[1] // 2])  # the middle token, as Vim's class token
