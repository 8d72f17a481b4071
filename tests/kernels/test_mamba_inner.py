"""mamba_inner_fn / bimamba_inner_fn on every backend vs the references and a float64 composition
of the oracles (with real flips), gradients on every weight."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.kernels.helpers import backend_params, reduction_scale
from tests.kernels.oracle import conv64, scan64
from tests.tolerances import assert_close
from vimd_kernels import bimamba_inner_fn, bimamba_inner_ref, mamba_inner_fn, mamba_inner_ref

KERNEL = "selective_scan"  # the mixers need both kernels; the scan is the one that lands last


def branch_weights(d_inner: int, N: int, rank: int, width: int, gen, with_bc=True, conv_bias=True):
    a_log = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(d_inner, 1)
    return dict(
        conv1d_weight=torch.randn(d_inner, 1, width, generator=gen) / width ** 0.5,
        conv1d_bias=torch.randn(d_inner, generator=gen) * 0.1 if conv_bias else None,
        x_proj_weight=torch.randn(rank + (2 * N if with_bc else 0), d_inner, generator=gen) / d_inner ** 0.5,
        delta_proj_weight=torch.randn(d_inner, rank, generator=gen) / rank ** 0.5,
        A=-torch.exp(a_log + 0.1 * torch.rand(d_inner, N, generator=gen)),
        D=torch.randn(d_inner, generator=gen),
        delta_bias=torch.rand(d_inner, generator=gen) * 0.5 - 2.0,
    )


def _req(d: dict, dtype=None) -> dict:
    return {k: None if v is None else (v.detach().clone() if dtype is None else v.detach().to(dtype))
            .requires_grad_(True) for k, v in d.items()}


def _core64(xz, w, B=None, C=None, reverse=False):
    """Float64 mixer body from the oracles; reverse by literally flipping xz in and y out."""
    if reverse:
        xz = xz.flip(-1)
    N = w["A"].shape[1]
    rank = w["delta_proj_weight"].shape[1]
    x, z = xz.chunk(2, dim=1)
    x = conv64(x, w["conv1d_weight"], w["conv1d_bias"], silu=True)
    x_dbl = torch.einsum("rd,bdl->brl", w["x_proj_weight"], x)
    delta = torch.einsum("dr,brl->bdl", w["delta_proj_weight"], x_dbl[:, :rank])
    col = rank
    if B is None:
        B, col = x_dbl[:, col:col + N], col + N
    if C is None:
        C = x_dbl[:, col:col + N]
    y, _ = scan64(x, delta, w["A"], B, C, w["D"], z, w["delta_bias"], delta_softplus=True)
    return y.flip(-1) if reverse else y


MIXER_CASES = [
    dict(batch=2, L=7, bc="data", out_bias=True, conv_bias=True),
    dict(batch=2, L=7, bc="given", out_bias=False, conv_bias=False),
    dict(batch=1, L=197, bc="data", out_bias=False, conv_bias=True),
]


def _tiny(c):
    return c["L"] <= 7


@pytest.mark.parametrize("backend,case", backend_params(KERNEL, MIXER_CASES, _tiny))
def test_mamba_inner(backend, case):
    gen = torch.Generator().manual_seed(0)
    d_model, d_inner, N, rank, width, L, b = 6, 8, 4, 2, 4, case["L"], case["batch"]
    given = case["bc"] == "given"
    w = branch_weights(d_inner, N, rank, width, gen, with_bc=not given, conv_bias=case["conv_bias"])
    extra = dict(
        xz=torch.randn(b, 2 * d_inner, L, generator=gen),
        out_proj_weight=torch.randn(d_model, d_inner, generator=gen) / d_inner ** 0.5,
        out_proj_bias=torch.randn(d_model, generator=gen) if case["out_bias"] else None,
        B=torch.randn(d_inner, N, generator=gen) if given else None,
        C=torch.randn(b, N, L, generator=gen) if given else None,
    )

    def call(fn, p):
        return fn(p["xz"], p["conv1d_weight"], p["conv1d_bias"], p["x_proj_weight"],
                  p["delta_proj_weight"], p["out_proj_weight"], p["out_proj_bias"], p["A"],
                  p["B"], p["C"], p["D"], p["delta_bias"], True, **({"backend": backend} if fn is mamba_inner_fn else {}))

    p = _req({**w, **extra})
    r = _req({**w, **extra})
    o = _req({**w, **extra}, torch.float64)
    out = call(mamba_inner_fn, p)
    ref = call(mamba_inner_ref, r)
    y64 = _core64(o["xz"], o, o["B"], o["C"])
    o_out = F.linear(y64.transpose(1, 2), o["out_proj_weight"], o["out_proj_bias"])
    assert out.shape == (b, L, d_model)
    assert_close(out, ref, "scan", torch.float32, "out vs mamba_inner_ref")
    assert_close(out, o_out, "scan", torch.float32, "out vs float64 oracle")

    dout = torch.randn(out.shape, generator=gen)
    for t in (out, ref, o_out):
        (t * dout.to(t.dtype)).sum().backward()
    scale = reduction_scale(b * L * d_inner)
    for name, t in p.items():
        if t is None:
            continue
        assert t.grad is not None, f"no gradient reached {name}"
        assert_close(t.grad, r[name].grad, "scan", torch.float32, f"d{name} vs ref", scale=scale)
        assert_close(t.grad, o[name].grad, "scan", torch.float32, f"d{name} vs oracle", scale=scale)


@pytest.mark.parametrize("backend,case", backend_params(KERNEL, [dict(batch=2, L=7, out_bias=True),
                                                                 dict(batch=1, L=197, out_bias=False)],
                                                        _tiny))
def test_bimamba_inner(backend, case):
    gen = torch.Generator().manual_seed(1)
    d_model, d_inner, N, rank, width, L, b = 6, 8, 4, 2, 4, case["L"], case["batch"]
    fwd = branch_weights(d_inner, N, rank, width, gen)
    bwd = branch_weights(d_inner, N, rank, width, gen)
    shared = dict(xz=torch.randn(b, 2 * d_inner, L, generator=gen),
                  out_proj_weight=torch.randn(d_model, d_inner, generator=gen) / d_inner ** 0.5,
                  out_proj_bias=torch.randn(d_model, generator=gen) if case["out_bias"] else None)
    flat = {**fwd, **{k + "_b": v for k, v in bwd.items()}, **shared}
    order = ["xz", "conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "A", "D",
             "delta_bias", "conv1d_weight_b", "conv1d_bias_b", "x_proj_weight_b",
             "delta_proj_weight_b", "A_b", "D_b", "delta_bias_b", "out_proj_weight", "out_proj_bias"]
    p, r, o = _req(flat), _req(flat), _req(flat, torch.float64)
    out = bimamba_inner_fn(*(p[k] for k in order), True, backend=backend)
    ref = bimamba_inner_ref(*(r[k] for k in order), True)
    ob = {k[:-2]: v for k, v in o.items() if k.endswith("_b")}
    y64 = (_core64(o["xz"], o) + _core64(o["xz"], ob, reverse=True)) / 2
    o_out = F.linear(y64.transpose(1, 2), o["out_proj_weight"], o["out_proj_bias"])
    assert out.shape == (b, L, d_model)
    assert_close(out, ref, "scan", torch.float32, "out vs bimamba_inner_ref")
    assert_close(out, o_out, "scan", torch.float32, "out vs float64 oracle")

    dout = torch.randn(out.shape, generator=gen)
    for t in (out, ref, o_out):
        (t * dout.to(t.dtype)).sum().backward()
    scale = reduction_scale(b * L * d_inner)
    for name, t in p.items():
        if t is None:
            continue
        assert t.grad is not None, f"no gradient reached {name}"
        assert_close(t.grad, r[name].grad, "scan", torch.float32, f"d{name} vs ref", scale=scale)
        assert_close(t.grad, o[name].grad, "scan", torch.float32, f"d{name} vs oracle", scale=scale)
