"""Pure-PyTorch Mamba mixer paths, composed from the reference scan and conv (with real flips)."""
from __future__ import annotations

import torch.nn.functional as F

from ..causal_conv1d.reference import causal_conv1d_ref
from ..selective_scan.reference import selective_scan_ref
from .body import inner_core


def _ref_core(xz, *args):
    return inner_core(xz, *args, scan=selective_scan_ref, conv=causal_conv1d_ref)


def mamba_inner_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                    out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None,
                    delta_softplus=True, *, backend=None):
    y = _ref_core(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D,
                  delta_bias, delta_softplus, False)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def bimamba_v2_inner_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, D,
                      delta_bias, conv1d_weight_b, conv1d_bias_b, x_proj_weight_b,
                      delta_proj_weight_b, A_b, D_b, delta_bias_b, out_proj_weight,
                      out_proj_bias=None, delta_softplus=True, *, backend=None):
    """The ViM v2 definition, literally: the reverse branch runs on flipped xz and is flipped back."""
    y = _ref_core(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, None, None,
                  D, delta_bias, delta_softplus, False)
    y_b = _ref_core(xz.flip(-1), conv1d_weight_b, conv1d_bias_b, x_proj_weight_b,
                    delta_proj_weight_b, A_b, None, None, D_b, delta_bias_b, delta_softplus,
                    False).flip(-1)
    return F.linear(((y + y_b) * 0.5).transpose(1, 2), out_proj_weight, out_proj_bias)
