"""Peak memory and saved activations of a ViM mixer forward+backward on the CPU backend: the
recompute mixer op (vimd::mixer_fwd, what mamba_inner_fn/bimamba_v2_inner_fn run) against the same
mixer composed from the scan and conv ops (each saving its own activations).

    python -m vimd_kernels.bench.mixer_memory [--batch 8] [--L 197] [--d-model 192]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from vimd_kernels import ops
from vimd_kernels.bench.common import peak_bytes


def _weights(d_model: int, d_inner: int, N: int, rank: int, width: int, gen) -> dict:
    return dict(conv1d_weight=torch.randn(d_inner, 1, width, generator=gen) / width ** 0.5,
                conv1d_bias=torch.randn(d_inner, generator=gen) * 0.1,
                x_proj_weight=torch.randn(rank + 2 * N, d_inner, generator=gen) / d_inner ** 0.5,
                delta_proj_weight=torch.randn(d_inner, rank, generator=gen) / rank ** 0.5,
                A=-torch.exp(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(d_inner, 1)),
                D=torch.ones(d_inner), delta_bias=torch.rand(d_inner, generator=gen) - 4.0)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for backward while running fn (distinct storages)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--L", type=int, default=197)
    ap.add_argument("--d-model", type=int, default=192)
    ap.add_argument("--backend", default="cpu")
    a = ap.parse_args()
    d_inner, N, rank = 2 * a.d_model, 16, -(-a.d_model // 16)
    gen = torch.Generator().manual_seed(0)
    f, b = _weights(a.d_model, d_inner, N, rank, 4, gen), _weights(a.d_model, d_inner, N, rank, 4, gen)
    for w in (f, b):
        for t in w.values():
            t.requires_grad_(True)
    out_w = (torch.randn(a.d_model, d_inner, generator=gen) / d_inner ** 0.5).requires_grad_(True)
    xz = torch.randn(a.batch, 2 * d_inner, a.L, generator=gen).requires_grad_(True)
    keys = ("conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "A")

    def fused(bi: bool):
        if bi:
            return ops.bimamba_v2_inner_fn(xz, *(f[k] for k in keys), f["D"], f["delta_bias"],
                                        *(b[k] for k in keys), b["D"], b["delta_bias"], out_w,
                                        backend=a.backend)
        return ops.mamba_inner_fn(xz, *(f[k] for k in keys[:4]), out_w, None, f["A"], D=f["D"],
                                  delta_bias=f["delta_bias"], backend=a.backend)

    def composed(bi: bool):
        y = ops._composed_core(a.backend, xz, *(f[k] for k in keys), None, None, f["D"],
                               f["delta_bias"], True, False)
        if bi:
            y_b = ops._composed_core(a.backend, xz, *(b[k] for k in keys), None, None, b["D"],
                                     b["delta_bias"], True, True)
            y = (y + y_b) * 0.5
        return F.linear(y.transpose(1, 2), out_w)

    xz_mb = xz.numel() * 4 / 2 ** 20
    print(f"mixer fwd+bwd, backend={a.backend}, batch={a.batch}, L={a.L}, d_model={a.d_model}, "
          f"d_inner={d_inner}, N={N}, float32; xz = {xz_mb:.1f} MiB")
    print(f"{'mixer':10s} {'path':9s} {'saved for bwd MiB':>18s} {'peak fwd+bwd MiB':>17s}")
    for bi in (False, True):
        for name, fn in (("composed", composed), ("fused", fused)):
            def step():
                fn(bi).square().mean().backward()
            saved = saved_bytes(lambda: fn(bi)) / 2 ** 20
            peak = peak_bytes(step, "cpu") / 2 ** 20
            print(f"{'bimamba' if bi else 'mamba':10s} {name:9s} {saved:18.1f} {peak:17.1f}")


if __name__ == "__main__":
    main()
