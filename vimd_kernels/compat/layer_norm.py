"""mamba_ssm 2.x ``mamba_ssm.ops.triton.layer_norm``: residual add + LayerNorm / RMSNorm.

Plain PyTorch with the semantics of upstream's fused kernel: the sum ``x (* rowscale) (+ x1)
(+ residual)`` is formed in float32 and normalised without rounding; the output comes back in x's
dtype; ``prenorm=True`` also returns the new residual, in residual's dtype, else float32 under
``residual_in_fp32``, else x's dtype (x itself when nothing was added). Autograd differentiates
it, so it runs on every device and dtype and under torch.compile. ``dropout_p > 0`` raises
NotImplementedError (apply ``nn.Dropout`` to x first).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _normalize(h, weight, bias, eps: float, is_rms_norm: bool):
    shape = h.shape[-1:]
    w = weight.to(h.dtype)
    b = bias.to(h.dtype) if bias is not None else None
    if not is_rms_norm:
        return F.layer_norm(h, shape, w, b, eps)
    y = F.rms_norm(h, shape, w, eps)
    return y + b if b is not None else y


def layer_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6,
                  dropout_p=0.0, rowscale=None, prenorm=False, residual_in_fp32=False,
                  is_rms_norm=False, return_dropout_mask=False):
    """The one body of every layer_norm_fn / rms_norm_fn here (upstream's LayerNormFn)."""
    if dropout_p != 0.0:
        raise NotImplementedError(f"dropout_p={dropout_p}: the compat layer norm has no fused "
                                  "dropout; apply nn.Dropout to x before it")
    ct = torch.promote_types(x.dtype, torch.float32)
    h = x.to(ct)
    if rowscale is not None:
        h = h * rowscale.to(ct)[..., None]
    if x1 is not None:
        h = h + x1.to(ct)
    if residual is not None:
        h = h + residual.to(ct)
    res_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else x.dtype)
    untouched = residual is None and x1 is None and rowscale is None and res_dtype == x.dtype
    outs = [_normalize(h, w, b, eps, is_rms_norm).to(x.dtype)
            for w, b in ((weight, bias), (weight1, bias1)) if w is not None]
    if prenorm:
        outs.append(x if untouched else h.to(res_dtype))
    if return_dropout_mask:
        outs += [None, None]  # no dropout, so no masks (as upstream with dropout_p=0)
    return outs[0] if len(outs) == 1 else tuple(outs)


def rms_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6,
                dropout_p=0.0, rowscale=None, prenorm=False, residual_in_fp32=False,
                return_dropout_mask=False):
    return layer_norm_fn(x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale,
                         prenorm, residual_in_fp32, True, return_dropout_mask)


class RMSNorm(nn.Module):
    """weight only (``bias`` is registered as None, as upstream); forward(x, residual=None,
    prenorm=False, residual_in_fp32=False) is ``rms_norm_fn`` with them."""

    def __init__(self, hidden_size, eps=1e-5, dropout_p=0.0, device=None, dtype=None):
        super().__init__()
        if dropout_p != 0.0:
            raise NotImplementedError(f"dropout_p={dropout_p}: RMSNorm's fused dropout is not "
                                      "supported; put an nn.Dropout before it")
        self.eps = eps
        self.drop = None
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return rms_norm_fn(x, self.weight, self.bias, residual=residual, eps=self.eps,
                           prenorm=prenorm, residual_in_fp32=residual_in_fp32)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


__all__ = ["layer_norm_fn", "rms_norm_fn", "RMSNorm"]
