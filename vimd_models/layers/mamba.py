"""The Mamba mixer (SPECS.md "Mamba mixer"), unidirectional or ViM's bidirectional "v2".

Parameter names follow the official releases (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``,
``A_log``, ``D``, ``out_proj``; the reverse branch of v2 adds ``conv1d_b``, ``x_proj_b``,
``dt_proj_b``, ``A_b_log``, ``D_b``), so released state dicts load by name.
The whole mixer body runs through ``vimd_kernels.mamba_inner_fn`` / ``bimamba_inner_fn``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vimd_kernels import bimamba_inner_fn, mamba_inner_fn


def no_weight_decay(p: nn.Parameter) -> nn.Parameter:
    """Tag a parameter so ``vimd_models.param_groups`` puts it in the no-decay group."""
    p._no_weight_decay = True
    return p


def init_dt_bias(n: int, dt_min: float = 1e-3, dt_max: float = 1e-1, floor: float = 1e-4) -> Tensor:
    """dt ~ logUniform(dt_min, dt_max) clamped at ``floor``; returns its inverse softplus (the bias)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def init_a_log(channels: int, n: int) -> Tensor:
    """A_log = log(1..N) for every channel (S4D-real init), float32 (channels, N)."""
    return torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(channels, 1)


def neg_exp(a_log: Tensor) -> Tensor:
    """A = -exp(A_log), in float32 (float64 for a float64 model, e.g. under gradcheck)."""
    return -torch.exp(a_log if a_log.dtype == torch.float64 else a_log.float())


class FusedBody(nn.Module):
    """Parameter-free wrapper of the fused mixer op, so per-module FLOP counts can single it out
    (it is the region mamba_ssm's counters skip: one autograd Function there)."""

    def __init__(self, bidirectional: bool):
        super().__init__()
        self.fn = bimamba_inner_fn if bidirectional else mamba_inner_fn

    def forward(self, *args, backend: str | None = None) -> Tensor:
        return self.fn(*args, backend=backend)


class Mamba(nn.Module):
    """x (B, L, d_model) -> (B, L, d_model).

    d_inner = expand * d_model, dt_rank = ceil(d_model / 16) by default. ``out_proj_scale`` rescales
    out_proj's default init (ViM uses 1/sqrt(depth), the prenorm-residual rescaling).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", bidirectional: bool = False, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, dt_init_floor: float = 1e-4, out_proj_scale: float = 1.0,
                 backend: str | None = None):
        super().__init__()
        if d_model < 1 or d_state < 1 or expand < 1:
            raise ValueError(f"d_model, d_state and expand must be >= 1, got {d_model}, {d_state}, {expand}")
        if not 2 <= d_conv <= 8:
            raise ValueError(f"d_conv must be between 2 and 8, got {d_conv}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.bidirectional = bidirectional
        self.backend = backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self._make_branch("", dt_min, dt_max, dt_init_floor)
        if bidirectional:
            self._make_branch("_b", dt_min, dt_max, dt_init_floor)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.fused = FusedBody(bidirectional)
        with torch.no_grad():
            self.out_proj.weight.mul_(out_proj_scale)

    def _make_branch(self, sfx: str, dt_min: float, dt_max: float, floor: float) -> None:
        di, n, r = self.d_inner, self.d_state, self.dt_rank
        setattr(self, "conv1d" + sfx, nn.Conv1d(di, di, self.d_conv, groups=di, padding=self.d_conv - 1))
        setattr(self, "x_proj" + sfx, nn.Linear(di, r + 2 * n, bias=False))
        dt_proj = nn.Linear(r, di, bias=True)
        nn.init.uniform_(dt_proj.weight, -r ** -0.5, r ** -0.5)
        with torch.no_grad():
            dt_proj.bias.copy_(init_dt_bias(di, dt_min, dt_max, floor))
        setattr(self, "dt_proj" + sfx, dt_proj)
        setattr(self, "A" + sfx + "_log", no_weight_decay(nn.Parameter(init_a_log(di, n))))
        setattr(self, "D" + sfx, no_weight_decay(nn.Parameter(torch.ones(di))))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, L, {self.d_model}), got {tuple(x.shape)}")
        xz = torch.matmul(self.in_proj.weight, x.transpose(1, 2))  # (B, 2*d_inner, L), contiguous
        A = neg_exp(self.A_log)
        if not self.bidirectional:
            return self.fused(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                              self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias, A,
                              None, None, self.D, self.dt_proj.bias, True, backend=self.backend)
        A_b = neg_exp(self.A_b_log)
        return self.fused(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                          self.dt_proj.weight, A, self.D, self.dt_proj.bias,
                          self.conv1d_b.weight, self.conv1d_b.bias, self.x_proj_b.weight,
                          self.dt_proj_b.weight, A_b, self.D_b, self.dt_proj_b.bias,
                          self.out_proj.weight, self.out_proj.bias, True, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}, bidirectional={self.bidirectional}")


def set_backend(model: nn.Module, backend: str | None) -> nn.Module:
    """Point every kernel-calling layer of ``model`` at ``backend`` (None = auto)."""
    for m in model.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    return model


__all__ = ["Mamba", "no_weight_decay", "set_backend", "init_dt_bias", "init_a_log", "neg_exp"]
