"""``mamba_ssm.ops.selective_scan_interface`` on vimd's ops: mamba_ssm 2.x's signatures, plus the
functions hustvl/Vim's fork adds (``mamba_inner_fn_no_out_proj``, ``bimamba_inner_fn`` /
``bimamba_inner_ref``, its bidirectional "v1" mixer).

Everything runs on the backend vimd picks for the tensors (``VIMD_BACKEND`` overrides it).
Beyond upstream: ``last_state`` carries a gradient. Not supported (NotImplementedError): complex
A. ``checkpoint_lvl`` is accepted and has no effect (vimd's fused mixer always recomputes the conv
output and delta in its backward, as checkpoint_lvl=1 does).
"""
from __future__ import annotations

from vimd_kernels import selective_scan_fn as _scan
from vimd_kernels import selective_scan_ref as _scan_ref

from .mixer import bimamba_v1, mamba_inner, mixer, real_A


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """out (batch, dim, L) [, last_state (batch, dim, N)]; see vimd_kernels.selective_scan_fn."""
    real_A(A)
    return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    real_A(A)
    return _scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                   out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None,
                   B_proj_bias=None, C_proj_bias=None, delta_softplus=True, checkpoint_lvl=1,
                   b_rms_weight=None, c_rms_weight=None, dt_rms_weight=None, b_c_dt_rms_eps=1e-6):
    """xz (batch, 2*d_inner, L) -> (batch, L, d_model)."""
    if checkpoint_lvl not in (0, 1):
        raise ValueError(f"checkpoint_lvl must be 0 or 1, got {checkpoint_lvl!r}")
    return mamba_inner(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                       out_proj_weight, out_proj_bias, A, B, C, D, delta_bias, B_proj_bias,
                       C_proj_bias, delta_softplus, b_rms_weight=b_rms_weight,
                       c_rms_weight=c_rms_weight, dt_rms_weight=dt_rms_weight,
                       rms_eps=b_c_dt_rms_eps)


def mamba_inner_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                    out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None,
                    B_proj_bias=None, C_proj_bias=None, delta_softplus=True):
    return mamba_inner(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                       out_proj_weight, out_proj_bias, A, B, C, D, delta_bias, B_proj_bias,
                       C_proj_bias, delta_softplus, reference=True)


def mamba_inner_fn_no_out_proj(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                               A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
                               C_proj_bias=None, delta_softplus=True):
    """Vim: the mixer before out_proj, (batch, d_inner, L)."""
    return mixer(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D,
                 delta_bias, B_proj_bias, C_proj_bias, delta_softplus)


def bimamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                     out_proj_weight, out_proj_bias, A, A_b, B=None, C=None, D=None,
                     delta_bias=None, B_proj_bias=None, C_proj_bias=None, delta_softplus=True):
    """Vim's "v1": every weight shared by both directions except A_b; out_proj(y + flip(y_b))."""
    return bimamba_v1(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                      out_proj_weight, out_proj_bias, A, A_b, B, C, D, delta_bias, B_proj_bias,
                      C_proj_bias, delta_softplus)


def bimamba_inner_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                      out_proj_weight, out_proj_bias, A, A_b, B=None, C=None, D=None,
                      delta_bias=None, B_proj_bias=None, C_proj_bias=None, delta_softplus=True):
    return bimamba_v1(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                      out_proj_weight, out_proj_bias, A, A_b, B, C, D, delta_bias, B_proj_bias,
                      C_proj_bias, delta_softplus, reference=True)


__all__ = ["selective_scan_fn", "selective_scan_ref", "mamba_inner_fn", "mamba_inner_ref",
           "mamba_inner_fn_no_out_proj", "bimamba_inner_fn", "bimamba_inner_ref"]
