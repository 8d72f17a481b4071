"""mamba_inner_fn / bimamba_v2_inner_fn on every backend vs the references and a float64 composition
of the oracles (with real flips), gradients on every weight."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vimd_kernels.bench.mixer_memory import saved_bytes
from tests.kernels.helpers import backend_params, reduction_scale
from tests.kernels.oracle import conv64, scan64
from tests.tolerances import assert_close
from vimd_kernels import bimamba_v2_inner_fn, bimamba_v2_inner_ref, mamba_inner_fn, mamba_inner_ref

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


def _check_grads(out, ref, o_out, p, r, o, gen, scale):
    """Backward one random cotangent through all three; every input's gradient must match."""
    dout = torch.randn(out.shape, generator=gen)
    for t in (out, ref, o_out):
        (t * dout.to(t.dtype)).sum().backward()
    for name, t in p.items():
        if t is None:
            continue
        assert t.grad is not None, f"no gradient reached {name}"
        assert_close(t.grad, r[name].grad, "scan", torch.float32, f"d{name} vs ref", scale=scale)
        assert_close(t.grad, o[name].grad, "scan", torch.float32, f"d{name} vs oracle", scale=scale)


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
    _check_grads(out, ref, o_out, p, r, o, gen, reduction_scale(b * L * d_inner))


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
    out = bimamba_v2_inner_fn(*(p[k] for k in order), True, backend=backend)
    ref = bimamba_v2_inner_ref(*(r[k] for k in order), True)
    ob = {k[:-2]: v for k, v in o.items() if k.endswith("_b")}
    y64 = (_core64(o["xz"], o) + _core64(o["xz"], ob, reverse=True)) / 2
    o_out = F.linear(y64.transpose(1, 2), o["out_proj_weight"], o["out_proj_bias"])
    assert out.shape == (b, L, d_model)
    assert_close(out, ref, "scan", torch.float32, "out vs bimamba_v2_inner_ref")
    assert_close(out, o_out, "scan", torch.float32, "out vs float64 oracle")
    _check_grads(out, ref, o_out, p, r, o, gen, reduction_scale(b * L * d_inner))


# ----------------------------------------------------------------------------- the mixer op
# mamba_inner_fn / bimamba_v2_inner_fn run every backend but "ref" through vimd::mixer_fwd/bwd
# (vimd_kernels/mamba_inner/fused.py): recompute in backward, both ViM directions in one op.

from vimd_kernels import ops  # noqa: E402
from vimd_kernels.mamba_inner import fused  # noqa: E402
from vimd_kernels.registry import kernel_available  # noqa: E402

needs_cpu = pytest.mark.skipif(not kernel_available("selective_scan", "cpu"), reason="no cpu backend")
BI_ORDER = ["xz", "conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "A", "D",
            "delta_bias", "conv1d_weight_b", "conv1d_bias_b", "x_proj_weight_b",
            "delta_proj_weight_b", "A_b", "D_b", "delta_bias_b", "out_proj_weight", "out_proj_bias"]


def _bi_inputs(seed=2, b=2, L=9, d_model=6, d_inner=8, N=4, rank=2, width=4, drop=()):
    gen = torch.Generator().manual_seed(seed)
    fwd = branch_weights(d_inner, N, rank, width, gen)
    bwd = branch_weights(d_inner, N, rank, width, gen)
    flat = {**fwd, **{k + "_b": v for k, v in bwd.items()},
            "xz": torch.randn(b, 2 * d_inner, L, generator=gen),
            "out_proj_weight": torch.randn(d_model, d_inner, generator=gen) / d_inner ** 0.5,
            "out_proj_bias": torch.randn(d_model, generator=gen)}
    for k in drop:
        flat[k] = None
    return flat


def _stacked_op_args(flat: dict, bidirectional: bool):
    """(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, delta_bias) with stacked (S, ...) weights."""
    sfx = ("", "_b") if bidirectional else ("",)
    st = lambda k: torch.stack([flat[k + s].reshape(flat[k + s].shape[0], -1) if k == "conv1d_weight"  # noqa: E731
                                else flat[k + s] for s in sfx]).detach().requires_grad_(True)
    return (flat["xz"].detach().clone().requires_grad_(True), st("conv1d_weight"), st("conv1d_bias"),
            st("x_proj_weight"), st("delta_proj_weight"), st("A"), st("D"), st("delta_bias"))


@needs_cpu
@pytest.mark.parametrize("bidirectional", (False, True))
def test_mixer_op_opcheck(bidirectional):
    args = _stacked_op_args(_bi_inputs(), bidirectional)
    torch.library.opcheck(torch.ops.vimd.mixer_fwd.default, (*args, True, "cpu"))
    plain = [t.detach() for t in args]
    dy = torch.randn(plain[0].shape[0], plain[0].shape[1] // 2, plain[0].shape[2])
    torch.library.opcheck(torch.ops.vimd.mixer_bwd.default, (*plain, dy, True, "cpu"))


@needs_cpu
@pytest.mark.parametrize("drop", [("conv1d_bias_b", "D"), ("delta_bias", "delta_bias_b", "conv1d_bias")])
def test_bimamba_mixer_op_with_missing_optional_weights(drop):
    """A weight absent in one direction only (zeros stand in for it inside the op)."""
    flat = _bi_inputs(drop=drop)
    p, r = _req(flat), _req(flat)
    out = bimamba_v2_inner_fn(*(p[k] for k in BI_ORDER), True, backend="cpu")
    ref = bimamba_v2_inner_ref(*(r[k] for k in BI_ORDER), True)
    assert_close(out, ref, "scan", torch.float32, "out vs bimamba_v2_inner_ref")
    dout = torch.randn(out.shape)
    (out * dout).sum().backward()
    (ref * dout).sum().backward()
    for k, t in p.items():
        if t is not None:
            assert_close(t.grad, r[k].grad, "scan", torch.float32, f"d{k}", scale=reduction_scale(18))


@needs_cpu
@pytest.mark.parametrize("bidirectional", (False, True))
def test_mixer_op_saves_only_xz_and_weights(bidirectional):
    """Activation memory: the mixer op keeps xz and the weights; the composed path (ref) much more."""
    flat = _bi_inputs(b=2, L=64, d_inner=16)
    p = _req(flat)
    fwd_names = ["xz", "conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight",
                 "out_proj_weight", "out_proj_bias", "A"]

    def run(backend):
        if bidirectional:
            return bimamba_v2_inner_fn(*(p[k] for k in BI_ORDER), True, backend=backend)
        return mamba_inner_fn(*(p[k] for k in fwd_names), None, None, p["D"], p["delta_bias"], True,
                              backend=backend)

    fused_bytes, composed_bytes = saved_bytes(lambda: run("cpu")), saved_bytes(lambda: run("ref"))
    xz_bytes = flat["xz"].numel() * 4
    y_bytes = xz_bytes // 2  # the out_proj input, saved by F.linear in both paths
    weights = sum(v.numel() * 4 for k, v in flat.items() if v is not None and k != "xz")
    assert fused_bytes <= xz_bytes + y_bytes + 2 * weights  # stacked weight copies at most
    assert composed_bytes > 2 * fused_bytes


@needs_cpu
@pytest.mark.parametrize("bidirectional", (False, True))
def test_mixer_op_uses_backend_bi_hooks(monkeypatch, bidirectional):
    """A kernel module's bi_forward/bi_backward run both directions when present (here: wrappers of
    the cpu module that record their calls, put in the dispatch table); results match the
    direction-by-direction path."""
    import dataclasses

    from vimd_kernels import registry
    from vimd_kernels.causal_conv1d import cpu as conv_cpu
    from vimd_kernels.selective_scan import cpu as scan_cpu
    calls = []

    def conv_bi_forward(x, w, b, silu):
        calls.append("conv_fwd")
        return torch.stack([conv_cpu.forward(x, w[s], None if b is None else b[s], silu, bool(s))
                            for s in range(2)])

    def conv_bi_backward(x, w, b, dout, silu):
        calls.append("conv_bwd")
        res = [conv_cpu.backward(x, w[s], None if b is None else b[s], dout[s], silu, bool(s))
               for s in range(2)]
        return [None if r[0] is None else torch.stack(r) for r in zip(*res)]

    pick = lambda t, s: None if t is None else t[s]  # noqa: E731

    def scan_bi_forward(u, delta, A, B, C, D, z, delta_bias, softplus):
        calls.append("scan_fwd")
        res = [scan_cpu.forward(u[s], delta[s], A[s], B[s], C[s], pick(D, s), z, pick(delta_bias, s),
                                None, softplus, bool(s)) for s in range(2)]
        return torch.stack([r[0] for r in res]), torch.stack([r[1] for r in res])

    def scan_bi_backward(u, delta, A, B, C, D, z, delta_bias, dout, softplus):
        calls.append("scan_bwd")
        res = [scan_cpu.backward(u[s], delta[s], A[s], B[s], C[s], pick(D, s), z, pick(delta_bias, s),
                                 None, dout[s], None, softplus, bool(s))[:8] for s in range(2)]
        return [None if r[0] is None else torch.stack(r) for r in zip(*res)]

    flat = _bi_inputs()
    args = _stacked_op_args(flat, bidirectional)
    y0 = fused._mixer_fwd(*args, True, "cpu")
    g0 = torch.autograd.grad(y0.square().sum(), args)
    for kernel, fwd, bwd in (("causal_conv1d", conv_bi_forward, conv_bi_backward),
                             ("selective_scan", scan_bi_forward, scan_bi_backward)):
        hooked = dataclasses.replace(registry.impl(kernel, "cpu"), bi_forward=fwd, bi_backward=bwd)
        monkeypatch.setitem(registry._TABLE, (kernel, "cpu"), hooked)
    args = _stacked_op_args(flat, bidirectional)
    y1 = fused._mixer_fwd(*args, True, "cpu")
    g1 = torch.autograd.grad(y1.square().sum(), args)
    want = ["conv_fwd", "scan_fwd", "conv_fwd", "scan_bwd", "conv_bwd"] if bidirectional else []
    assert calls == want
    assert_close(y1, y0, "scan", torch.float32, "y, hooks vs two calls")
    for a, b in zip(g1, g0):  # batched matmuls over (2, ...) round differently from per-direction ones
        assert_close(a, b, "scan", torch.float32, "grad, hooks vs two calls", scale=reduction_scale(18))


@needs_cpu
@pytest.mark.parametrize("bidirectional", (False, True))
def test_mixer_op_autocast_bf16_matches_composed(bidirectional):
    """Under autocast(bfloat16) the mixer op computes x_proj/dt_proj in bfloat16 like the composed
    path does (and recomputes them the same way in backward): dtypes and values of the public op
    against the ref backend, and the mixer body against the composed body on the same backend,
    which must be much nearer to it than the float32-projection body is."""
    flat = _bi_inputs(L=12)
    p, r = _req(flat), _req(flat)
    fwd_names = ["xz", "conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight",
                 "out_proj_weight", "out_proj_bias", "A"]

    def run(q, backend):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if bidirectional:
                return bimamba_v2_inner_fn(*(q[k] for k in BI_ORDER), True, backend=backend)
            return mamba_inner_fn(*(q[k] for k in fwd_names), None, None, q["D"], q["delta_bias"],
                                  True, backend=backend)

    out, ref = run(p, "cpu"), run(r, "ref")
    assert out.dtype == ref.dtype == torch.bfloat16
    assert_close(out, ref, "scan", torch.bfloat16, "out")
    dout = torch.randn(out.shape)
    (out.float() * dout).sum().backward()
    (ref.float() * dout).sum().backward()
    for k, t in p.items():
        if not bidirectional and k.endswith("_b"):
            continue
        assert t.grad is not None and t.grad.dtype == t.dtype, k
        assert_close(t.grad, r[k].grad, "scan", torch.bfloat16, f"d{k}", scale=reduction_scale(24))

    keys = ("conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "A", "D", "delta_bias")
    q = _req(flat)
    branches = [{k: q[k + sfx] for k in keys} for sfx in (("", "_b") if bidirectional else ("",))]

    def composed(autocast: bool):
        ys = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for s, br in enumerate(branches):
                ys.append(ops._composed_core("cpu", q["xz"], *(br[k] for k in keys[:5]), None, None,
                                             br["D"], br["delta_bias"], True, bool(s)))
        return ys[0] if len(ys) == 1 else (ys[0] + ys[1]) * 0.5

    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused.mixer("cpu", q["xz"], branches, True)
    want, fp32_body = composed(True), composed(False)
    assert y.dtype == want.dtype == torch.float32
    assert_close(y, want, "scan", torch.float32, "mixer body vs composed body, autocast")
    assert (y - want).abs().max() < 0.25 * (fp32_body - want).abs().max()
    dy = torch.randn(y.shape)
    g = torch.autograd.grad((y * dy).sum(), q["xz"])[0]
    g_want = torch.autograd.grad((want * dy).sum(), q["xz"])[0]
    assert_close(g, g_want, "scan", torch.float32, "dxz vs composed body, autocast")


@pytest.mark.graph_capture
@needs_cpu
def test_mixer_op_is_one_node_under_compile():
    """torch.compile(fullgraph=True) sees vimd::mixer_fwd as one opaque node (no graph break)."""
    torch._dynamo.reset()
    flat = _bi_inputs()
    seen = []

    def capture(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    f = torch.compile(lambda *a: bimamba_v2_inner_fn(*a, True, backend="cpu"), fullgraph=True,
                      backend=capture)
    out = f(*(flat[k] for k in BI_ORDER))
    assert any("vimd.mixer_fwd" in s for s in seen), seen
    ref = bimamba_v2_inner_ref(*(flat[k] for k in BI_ORDER), True)
    assert_close(out, ref, "scan", torch.float32, "compiled out")


def test_bimamba_bf16_activations_with_fp32_weights_match_reference():
    """xz in bfloat16, weights in float32 (no autocast): the fused mixer and the reference both run
    x_proj / dt_proj in the weights' dtype, so they agree (the reference used to raise)."""
    flat = _bi_inputs()
    flat["xz"] = flat["xz"].to(torch.bfloat16)
    flat["out_proj_weight"] = flat["out_proj_weight"].to(torch.bfloat16)
    flat["out_proj_bias"] = flat["out_proj_bias"].to(torch.bfloat16)
    outs = {}
    for backend in ("ref", "cpu"):
        x = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in flat.items()}
        y = bimamba_v2_inner_fn(*(x[k] for k in BI_ORDER), backend=backend)
        y.float().sum().backward()
        outs[backend] = (y.float(), x["xz"].grad.float())
    assert_close(outs["cpu"][0], outs["ref"][0], "scan", torch.bfloat16, "y")
    assert_close(outs["cpu"][1], outs["ref"][1], "scan", torch.bfloat16, "dxz")
