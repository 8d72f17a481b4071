"""The Mamba mixer (Gu & Dao 2023, mamba_ssm's ``Mamba``), unidirectional or ViM's bidirectional "v2".

The constructor takes mamba_ssm's ``Mamba`` arguments in upstream's order, with hustvl/Vim's
``bimamba_type`` ("none", "v1", "v2"), ``if_divide_out`` and ``init_layer_scale``, then vimd's own
keyword-only ``bidirectional`` (Vim's "v2" with the averaged directions, ``if_divide_out=True``),
``out_proj_scale`` and ``backend``. Parameter names are upstream's (``in_proj``, ``conv1d``,
``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``; "v2" adds ``conv1d_b``, ``x_proj_b``,
``dt_proj_b``, ``A_b_log``, ``D_b``, "v1" only ``A_b_log``; ``gamma`` with init_layer_scale), so
released state dicts load by name.

The forward pass runs through ``vimd_kernels.mamba_inner_fn`` / ``bimamba_v2_inner_fn`` (Vim's "v1":
``vimd_kernels.compat``); with ``inference_params`` it fills the decoding states and then steps
one token at a time (``step``: ``vimd_kernels.causal_conv1d_update`` and
``selective_state_update`` on the layer's backend). A, D and dt_bias enter the kernels in float32
whatever the model's dtype, so ``model.to(torch.bfloat16)`` runs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vimd_kernels import bimamba_v2_inner_fn, causal_conv1d_update, mamba_inner_fn, selective_state_update
from vimd_kernels.compat.mixer import bimamba_v1, mixer


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


def param32(p: Tensor | None) -> Tensor | None:
    """A parameter as the kernels take A, D and dt_bias: float32 (float64 for a float64 model,
    e.g. under gradcheck), whatever dtype the model was cast to."""
    return p if p is None or p.dtype == torch.float64 else p.float()


def neg_exp(a_log: Tensor) -> Tensor:
    """A = -exp(A_log), in float32 (float64 for a float64 model)."""
    return -torch.exp(param32(a_log))


# bimamba_type -> the fused mixer op; the directions it needs ("_b": the reverse branch's weights)
MIXERS = {"none": (mamba_inner_fn, ("",)), "v1": (bimamba_v1, ("",)),
          "v2": (bimamba_v2_inner_fn, ("", "_b"))}
DT_INIT = {"random": lambda w, std: nn.init.uniform_(w, -std, std),
           "constant": lambda w, std: nn.init.constant_(w, std)}


class FusedBody(nn.Module):
    """Parameter-free wrapper of the fused mixer op, so per-module FLOP counts can single it out
    (it is the region mamba_ssm's counters skip: one autograd Function there)."""

    def __init__(self, bimamba_type: str = "none"):
        super().__init__()
        self.fn = MIXERS[bimamba_type][0]

    def forward(self, *args, backend: str | None = None, **kwargs) -> Tensor:
        return self.fn(*args, **kwargs, backend=backend)


class Mamba(nn.Module):
    """x (B, L, d_model) -> (B, L, d_model).

    d_inner = expand * d_model, dt_rank = ceil(d_model / 16) by default. ``out_proj_scale`` rescales
    out_proj's default init (ViM uses 1/sqrt(depth), the prenorm-residual rescaling).
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001,
                 dt_max=0.1, dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True,
                 bias=False, use_fast_path=True, layer_idx=None, device=None, dtype=None,
                 bimamba_type="none", if_divide_out=False, init_layer_scale=None, *,
                 bidirectional: bool = False, out_proj_scale: float = 1.0, backend: str | None = None):
        super().__init__()
        if d_model < 1 or d_state < 1 or expand < 1:
            raise ValueError(f"d_model, d_state and expand must be >= 1, got {d_model}, {d_state}, {expand}")
        if not 2 <= d_conv <= 8:
            raise ValueError(f"d_conv must be between 2 and 8, got {d_conv}")
        if bimamba_type not in MIXERS:
            raise ValueError(f"bimamba_type must be one of {sorted(MIXERS)}, got {bimamba_type!r}")
        if bidirectional:
            if bimamba_type != "none":
                raise ValueError("give bidirectional=True or bimamba_type, not both")
            bimamba_type, if_divide_out = "v2", True
        if dt_init not in DT_INIT:
            raise NotImplementedError(f"dt_init must be one of {sorted(DT_INIT)}, got {dt_init!r}")
        if bimamba_type != "none" and not use_fast_path:
            raise NotImplementedError(f"use_fast_path=False with bimamba_type={bimamba_type!r}: the "
                                      "unfused path runs one direction only")
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path, self.layer_idx, self.activation = use_fast_path, layer_idx, "silu"
        self.bimamba_type, self.if_divide_out = bimamba_type, if_divide_out
        self.bidirectional = bimamba_type != "none"
        self.init_layer_scale = init_layer_scale
        self.backend = backend
        if init_layer_scale is not None:
            self.gamma = nn.Parameter(torch.full((d_model,), float(init_layer_scale), **fk))
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **fk)
        init = dict(dt_min=dt_min, dt_max=dt_max, floor=dt_init_floor, std=self.dt_rank ** -0.5 * dt_scale,
                    dt_init=dt_init, conv_bias=conv_bias, fk=fk)
        self._make_branch("", **init)
        if bimamba_type == "v2":
            self._make_branch("_b", **init)
        if bimamba_type == "v1":
            self.A_b_log = no_weight_decay(nn.Parameter(init_a_log(self.d_inner, d_state).to(device)))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)
        self.fused = FusedBody(bimamba_type)
        with torch.no_grad():
            self.out_proj.weight.mul_(out_proj_scale)

    def _make_branch(self, sfx: str, dt_min, dt_max, floor, std, dt_init, conv_bias, fk) -> None:
        di, n, r = self.d_inner, self.d_state, self.dt_rank
        setattr(self, "conv1d" + sfx, nn.Conv1d(di, di, self.d_conv, groups=di, padding=self.d_conv - 1,
                                                bias=conv_bias, **fk))
        setattr(self, "x_proj" + sfx, nn.Linear(di, r + 2 * n, bias=False, **fk))
        dt_proj = nn.Linear(r, di, bias=True, **fk)
        DT_INIT[dt_init](dt_proj.weight, std)
        with torch.no_grad():
            dt_proj.bias.copy_(init_dt_bias(di, dt_min, dt_max, floor))
        dt_proj.bias._no_reinit = True  # ViM's init keeps it (it zeroes the other Linear biases)
        setattr(self, "dt_proj" + sfx, dt_proj)
        device = fk["device"]
        setattr(self, "A" + sfx + "_log", no_weight_decay(nn.Parameter(init_a_log(di, n).to(device))))
        setattr(self, "D" + sfx, no_weight_decay(nn.Parameter(torch.ones(di, device=device))))

    def _weights(self, sfx: str = "") -> dict:
        """One direction's weights as the mixer ops name them (A, D, dt_bias in float32)."""
        conv, dt = getattr(self, "conv1d" + sfx), getattr(self, "dt_proj" + sfx)
        return {"conv1d_weight" + sfx: conv.weight, "conv1d_bias" + sfx: conv.bias,
                "x_proj_weight" + sfx: getattr(self, "x_proj" + sfx).weight,
                "delta_proj_weight" + sfx: dt.weight, "A" + sfx: neg_exp(getattr(self, f"A{sfx}_log")),
                "D" + sfx: param32(getattr(self, "D" + sfx)), "delta_bias" + sfx: param32(dt.bias)}

    def forward(self, hidden_states: Tensor, inference_params=None) -> Tensor:
        x = hidden_states
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, L, {self.d_model}), got {tuple(x.shape)}")
        conv_state = ssm_state = None
        if inference_params is not None:
            if self.bidirectional:
                raise NotImplementedError(f"inference_params with bimamba_type={self.bimamba_type!r}: "
                                          "a bidirectional mixer has no token-by-token decoding")
            conv_state, ssm_state = self._get_states_from_cache(inference_params, x.shape[0])
            if inference_params.seqlen_offset > 0:
                return self._scale(self.step(x, conv_state, ssm_state)[0])
        xz = torch.matmul(self.in_proj.weight, x.transpose(1, 2))  # (B, 2*d_inner, L), contiguous
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        if self.use_fast_path and inference_params is None:
            weights = {k: v for sfx in MIXERS[self.bimamba_type][1] for k, v in self._weights(sfx).items()}
            if self.bimamba_type == "v1":
                weights["A_b"] = neg_exp(self.A_b_log)
            out_w = self.out_proj.weight
            if self.bimamba_type == "v2" and not self.if_divide_out:  # the op averages; Vim can sum
                out_w = 2 * out_w
            out = self.fused(xz, **weights, out_proj_weight=out_w, out_proj_bias=self.out_proj.bias,
                             backend=self.backend)
        else:
            out = self.out_proj(self._fill_states(xz, conv_state, ssm_state).transpose(1, 2))
        return self._scale(out)

    def _fill_states(self, xz: Tensor, conv_state, ssm_state) -> Tensor:
        """The unfused mixer body (B, d_inner, L), writing the decoding states when given."""
        if conv_state is not None:  # the last d_conv inputs, zeros before the start
            conv_state.copy_(F.pad(xz[:, :self.d_inner], (self.d_conv - xz.shape[-1], 0)))
        y = mixer(xz, **self._weights(), return_last_state=ssm_state is not None, backend=self.backend)
        if ssm_state is None:
            return y
        ssm_state.copy_(y[1])
        return y[0]

    def _scale(self, out: Tensor) -> Tensor:
        return out * self.gamma if self.init_layer_scale is not None else out

    def step(self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor):
        """One token (B, 1, d_model) -> (out (B, 1, d_model), conv_state, ssm_state), the states
        updated in place."""
        if hidden_states.shape[1] != 1:
            raise ValueError(f"step decodes one token at a time: hidden_states must be (batch, 1, "
                             f"{self.d_model}), got {tuple(hidden_states.shape)}")
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)  # (B, d_inner) each
        x = causal_conv1d_update(x, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, self.activation,
                                 backend=self.backend)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        y = selective_state_update(ssm_state, x, F.linear(dt, self.dt_proj.weight), neg_exp(self.A_log),
                                   B, C, param32(self.D), z=z, dt_bias=param32(self.dt_proj.bias),
                                   dt_softplus=True, backend=self.backend)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def _new_states(self, batch_size: int, dtype=None) -> tuple[Tensor, Tensor]:
        """Zero (conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state))."""
        w = self.conv1d.weight
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv, device=w.device, dtype=dtype or w.dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=w.device,
                          dtype=dtype or self.dt_proj.weight.dtype)
        return conv, ssm

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        return self._new_states(batch_size, dtype)

    def _get_states_from_cache(self, inference_params, batch_size, initialize_states=False):
        if self.layer_idx is None:
            raise ValueError("decoding with inference_params needs the layer's layer_idx")
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            cache[self.layer_idx] = self._new_states(batch_size)
        elif initialize_states:
            for s in cache[self.layer_idx]:
                s.zero_()
        return cache[self.layer_idx]

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}, bimamba_type={self.bimamba_type!r}")


def set_backend(model: nn.Module, backend: str | None) -> nn.Module:
    """Point every kernel-calling layer of ``model`` at ``backend`` (None = auto)."""
    for m in model.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    return model


__all__ = ["Mamba", "no_weight_decay", "set_backend", "init_dt_bias", "init_a_log", "neg_exp",
           "param32"]
