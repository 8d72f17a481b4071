"""MambaIR's 2-D selective scan block (SS2D) and its residual block, for the RSSB-2D variant.

The four routes (row-major, column-major, and both reversed) run as ONE ``selective_scan_fn`` call:
the routes are stacked along channels (4 * d_inner) and B/C are grouped (G = 4), so each group of
d_inner channels reads its own route's B/C.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vimd_kernels import selective_scan_fn

from .drop import DropPath
from .mamba import init_a_log, init_dt_bias, neg_exp, no_weight_decay

K = 4  # routes


class SS2D(nn.Module):
    """x (B, H, W, C) -> (B, H, W, C): in_proj -> depthwise conv2d 3x3 + SiLU -> 4-route scan ->
    LayerNorm -> * SiLU(z) -> out_proj."""

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 3,
                 dt_rank: int | str = "auto", backend: str | None = None):
        super().__init__()
        di = expand * d_model
        r = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.d_model, self.d_inner, self.d_state, self.dt_rank, self.backend = d_model, di, d_state, r, backend
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        self.conv2d = nn.Conv2d(di, di, d_conv, padding=(d_conv - 1) // 2, groups=di)
        self.x_proj_weight = nn.Parameter(torch.empty(K, r + 2 * d_state, di))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, di, r).uniform_(-r ** -0.5, r ** -0.5))
        self.dt_projs_bias = no_weight_decay(nn.Parameter(torch.stack([init_dt_bias(di) for _ in range(K)])))
        self.A_logs = no_weight_decay(nn.Parameter(init_a_log(K * di, d_state)))
        self.Ds = no_weight_decay(nn.Parameter(torch.ones(K * di)))
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, d_model, bias=False)
        bound = 1.0 / math.sqrt(di)  # nn.Linear's default range for each route's x_proj
        nn.init.uniform_(self.x_proj_weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        di, n, r, L = self.d_inner, self.d_state, self.dt_rank, h * w
        xc, z = self.in_proj(x).chunk(2, dim=-1)
        xc = F.silu(self.conv2d(xc.permute(0, 3, 1, 2).contiguous()))  # (b, di, h, w)
        row = xc.flatten(2)
        col = xc.transpose(2, 3).flatten(2)
        xs = torch.stack((row, col, row.flip(-1), col.flip(-1)), dim=1)  # (b, K, di, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts = torch.einsum("bkrl,kdr->bkdl", x_dbl[:, :, :r], self.dt_projs_weight)
        Bs = x_dbl[:, :, r:r + n].contiguous()
        Cs = x_dbl[:, :, r + n:].contiguous()
        ys = selective_scan_fn(xs.reshape(b, K * di, L), dts.reshape(b, K * di, L), neg_exp(self.A_logs),
                               Bs, Cs, self.Ds, None, self.dt_projs_bias.reshape(-1),
                               delta_softplus=True, backend=self.backend).view(b, K, di, L)
        undo_col = lambda t: t.view(b, di, w, h).transpose(2, 3).reshape(b, di, L)  # noqa: E731
        y = ys[:, 0] + ys[:, 2].flip(-1) + undo_col(ys[:, 1]) + undo_col(ys[:, 3].flip(-1))
        y = self.out_norm(y.transpose(1, 2)).view(b, h, w, di) * F.silu(z)
        return self.out_proj(y)


class ChannelAttention(nn.Module):
    def __init__(self, ch: int, squeeze: int = 30):
        super().__init__()
        mid = max(1, ch // squeeze)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, mid, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(mid, ch, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Conv3x3 -> GELU -> Conv3x3 -> channel attention (MambaIR's conv block)."""

    def __init__(self, ch: int, compress: int = 3, squeeze: int = 30):
        super().__init__()
        mid = max(1, ch // compress)
        self.cab = nn.Sequential(nn.Conv2d(ch, mid, 3, 1, 1), nn.GELU(), nn.Conv2d(mid, ch, 3, 1, 1),
                                 ChannelAttention(ch, squeeze))

    def forward(self, x: Tensor) -> Tensor:
        return self.cab(x)


class VSSBlock(nn.Module):
    """x (B, L, C) with L = H*W (row-major) -> same: x*s1 + SS2D(LN(x)); then x*s2 + CAB(LN(x))."""

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, drop_path: float = 0.0,
                 backend: str | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = SS2D(dim, d_state=d_state, expand=expand, backend=backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.skip_scale = no_weight_decay(nn.Parameter(torch.ones(dim)))
        self.ln_2 = nn.LayerNorm(dim)
        self.conv_blk = CAB(dim)
        self.skip_scale2 = no_weight_decay(nn.Parameter(torch.ones(dim)))

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        b, L, c = x.shape
        x4 = x.view(b, *hw, c)
        x4 = x4 * self.skip_scale + self.drop_path(self.self_attention(self.ln_1(x4)))
        conv = self.conv_blk(self.ln_2(x4).permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)
        return (x4 * self.skip_scale2 + conv).reshape(b, L, c)
