"""mamba_ssm 1.x ``mamba_ssm.ops.triton.layernorm`` (the path Vim imports): the 1.x signatures
over the one body in ``layer_norm`` (same semantics)."""
from __future__ import annotations

from . import layer_norm as _v2


def layer_norm_fn(x, weight, bias, residual=None, eps=1e-6, prenorm=False, residual_in_fp32=False,
                  is_rms_norm=False):
    return _v2.layer_norm_fn(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm,
                             residual_in_fp32=residual_in_fp32, is_rms_norm=is_rms_norm)


def rms_norm_fn(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6):
    return _v2.layer_norm_fn(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm,
                             residual_in_fp32=residual_in_fp32, is_rms_norm=True)


class RMSNorm(_v2.RMSNorm):
    def __init__(self, hidden_size, eps=1e-5, device=None, dtype=None):
        super().__init__(hidden_size, eps, device=device, dtype=dtype)


__all__ = ["layer_norm_fn", "rms_norm_fn", "RMSNorm"]
