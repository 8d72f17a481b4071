"""RMSNorm (ViM), with an add+norm helper that keeps the residual stream in float32."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32, returned in x's dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def add_norm(hidden: Tensor, residual: Tensor | None, norm: nn.Module) -> tuple[Tensor, Tensor]:
    """Prenorm step: residual = residual + hidden (float32), return (norm(residual), residual).

    ``hidden`` is the (already drop-path'ed) branch output; ``residual`` None starts the stream.
    The add and the norm are plain elementwise PyTorch, which torch.compile fuses into one kernel.
    """
    residual = hidden.float() if residual is None else residual + hidden.float()
    return norm(residual.to(hidden.dtype)), residual
