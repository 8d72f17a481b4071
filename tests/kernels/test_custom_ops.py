"""torch.library.opcheck of the vimd:: custom ops and torch.compile(fullgraph=True) of the mixers."""
from __future__ import annotations

import pytest
import torch

import vimd_kernels.ops  # noqa: F401  (registers vimd::)
from tests.kernels.helpers import SCAN_ARGS, ScanCase, scan_inputs
from tests.kernels.test_mamba_inner import branch_weights
from vimd_kernels import bimamba_v2_inner_fn, mamba_inner_fn
from vimd_kernels.registry import kernel_available

OPCHECK_BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(
    not kernel_available("selective_scan", b), reason=f"backend {b!r} not available"))
    for b in ("ref", "cpu")]

SCAN_CASES = [
    ScanCase(batch=2, dim=4, L=5, N=3),
    ScanCase(batch=1, dim=4, L=4, N=2, b_kind="g2", c_kind="const", initial_state=True, reverse=True),
    ScanCase(batch=2, dim=2, L=3, N=2, b_kind="const", c_kind="var", D=False, z=False,
             delta_bias=False, softplus=False),
    ScanCase(batch=1, dim=2, L=4, N=2, dtype=torch.float16, initial_state=True),
]


def _scan_args(case: ScanCase):
    x = scan_inputs(case)
    ts = [x[k] if x[k] is None else x[k].requires_grad_(x[k].is_floating_point()) for k in SCAN_ARGS]
    return ts


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
@pytest.mark.parametrize("case", SCAN_CASES, ids=str)
def test_opcheck_selective_scan(backend, case):
    ts = _scan_args(case)
    torch.library.opcheck(torch.ops.vimd.selective_scan_fwd.default,
                          (*ts, case.softplus, case.reverse, backend))
    plain = [t.detach() if t is not None else None for t in ts]
    out = torch.randn(case.batch, case.dim, case.L).to(case.dtype)
    dlast = torch.randn(case.batch, case.dim, case.N) if case.initial_state else None
    torch.library.opcheck(torch.ops.vimd.selective_scan_bwd.default,
                          (*plain, out, dlast, case.softplus, case.reverse, backend))


CONV_CASES = [(4, True, True, False), (2, False, False, True), (8, True, False, True)]


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
@pytest.mark.parametrize("width,bias,silu,reverse", CONV_CASES)
def test_opcheck_causal_conv1d(backend, width, bias, silu, reverse):
    if not kernel_available("causal_conv1d", backend):
        pytest.skip(f"no causal_conv1d on {backend}")
    x = torch.randn(2, 4, 6, requires_grad=True)
    w = torch.randn(4, width, requires_grad=True)
    b = torch.randn(4, requires_grad=True) if bias else None
    torch.library.opcheck(torch.ops.vimd.causal_conv1d_fwd.default, (x, w, b, silu, reverse, backend))
    torch.library.opcheck(torch.ops.vimd.causal_conv1d_bwd.default,
                          (x.detach(), w.detach(), None if b is None else b.detach(),
                           torch.randn(2, 4, 6), silu, reverse, backend))


def _mixer(gen, d_model=6, d_inner=8, N=4, rank=2, L=9, batch=2):
    fwd = branch_weights(d_inner, N, rank, 4, gen)
    bwd = branch_weights(d_inner, N, rank, 4, gen)
    shared = dict(xz=torch.randn(batch, 2 * d_inner, L, generator=gen),
                  out_proj_weight=torch.randn(d_model, d_inner, generator=gen) / d_inner ** 0.5)
    return {**fwd, **{k + "_b": v for k, v in bwd.items()}, **shared}


def _both(p):
    y1 = mamba_inner_fn(p["xz"], p["conv1d_weight"], p["conv1d_bias"], p["x_proj_weight"],
                        p["delta_proj_weight"], p["out_proj_weight"], None, p["A"], None, None,
                        p["D"], p["delta_bias"], True)
    y2 = bimamba_v2_inner_fn(p["xz"], p["conv1d_weight"], p["conv1d_bias"], p["x_proj_weight"],
                          p["delta_proj_weight"], p["A"], p["D"], p["delta_bias"],
                          p["conv1d_weight_b"], p["conv1d_bias_b"], p["x_proj_weight_b"],
                          p["delta_proj_weight_b"], p["A_b"], p["D_b"], p["delta_bias_b"],
                          p["out_proj_weight"], None, True)
    return y1 + y2


@pytest.mark.graph_capture
def test_compile_fullgraph_matches_eager():
    """One compiled graph (no breaks) with mamba_inner_fn and bimamba_v2_inner_fn, forward and backward,
    on the default backend for CPU tensors."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    base = _mixer(gen)
    p = {k: v.clone().requires_grad_(True) for k, v in base.items()}
    q = {k: v.clone().requires_grad_(True) for k, v in base.items()}
    eager = _both(p)
    compiled = torch.compile(_both, fullgraph=True, backend="inductor")(q)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    dout = torch.randn(eager.shape, generator=gen)
    (eager * dout).sum().backward()
    (compiled * dout).sum().backward()
    for k in p:
        torch.testing.assert_close(q[k].grad, p[k].grad, rtol=1e-5, atol=1e-5, msg=lambda m: f"d{k}: {m}")


# The C++ kernel ops (torch.ops.vimd.*_cpu, registered by vimd_kernels/libvimd_ops.so) that the
# custom ops above call and that exported graphs hold: schema, and fake kernels (vimd_kernels/native.py)
# against the real outputs' shapes, dtypes and strides.
NEEDS_CPU_OPS = pytest.mark.skipif(not kernel_available("selective_scan", "cpu"),
                                   reason="backend 'cpu' not available")
KERNEL_OP_CASES = SCAN_CASES + [ScanCase(batch=2, dim=3, L=6, N=2, dtype=torch.float64, initial_state=True)]


@NEEDS_CPU_OPS
@pytest.mark.parametrize("case", KERNEL_OP_CASES, ids=str)
def test_opcheck_cpu_kernel_scan_op(case):
    x = scan_inputs(case)
    torch.library.opcheck(torch.ops.vimd.selective_scan_fwd_cpu.default,
                          (*[x[k] for k in SCAN_ARGS], case.softplus, case.reverse))


@NEEDS_CPU_OPS
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64))
@pytest.mark.parametrize("width,bias,silu,reverse", CONV_CASES)
def test_opcheck_cpu_kernel_conv_op(dtype, width, bias, silu, reverse):
    x = torch.randn(2, 4, 6).to(dtype)
    w = torch.randn(4, width).to(dtype)
    b = torch.randn(4).to(dtype) if bias else None
    torch.library.opcheck(torch.ops.vimd.causal_conv1d_fwd_cpu.default, (x, w, b, silu, reverse))


def _step_inputs(gen, batch=2, dim=4, N=3, width=4, state_len=5):
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return dict(x=r(batch, dim), z=r(batch, dim), dt=r(batch, dim), A=-torch.rand(dim, N, generator=gen),
                B=r(batch, 2, N), C=r(batch, N), D=r(dim), dt_bias=r(dim), state=r(batch, dim, N),
                conv_state=r(batch, dim, state_len), weight=r(dim, width), bias=r(dim),
                seqlens=torch.tensor([3, 11], dtype=torch.int32))


@NEEDS_CPU_OPS
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64))
@pytest.mark.parametrize("circular", (False, True))
def test_opcheck_cpu_kernel_update_ops(dtype, circular):
    """The C++ decoding steps, which update their state argument in place (Tensor(a!) schemas)."""
    p = _step_inputs(torch.Generator().manual_seed(2))
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    io = {k: p[k].to(dtype) for k in ("x", "z", "dt", "B", "C", "conv_state", "weight", "bias")}
    f = {k: p[k].to(ct) for k in ("state", "A", "D", "dt_bias")}
    torch.library.opcheck(torch.ops.vimd.selective_state_update_cpu.default,
                          (f["state"], io["x"], io["dt"], f["A"], io["B"], io["C"], f["D"], io["z"],
                           f["dt_bias"], True))
    torch.library.opcheck(torch.ops.vimd.causal_conv1d_update_cpu.default,
                          (io["x"][..., None], io["conv_state"], io["weight"], io["bias"], True,
                           p["seqlens"] if circular else None))


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
@pytest.mark.parametrize("circular", (False, True))
def test_opcheck_update_ops(backend, circular):
    """The decoding steps' custom ops (mutating their state) pass opcheck."""
    p = _step_inputs(torch.Generator().manual_seed(0))
    torch.library.opcheck(torch.ops.vimd.selective_state_update.default,
                          (p["state"], p["x"], p["dt"], p["A"], p["B"], p["C"], p["D"], p["z"],
                           p["dt_bias"], True, backend))
    torch.library.opcheck(torch.ops.vimd.causal_conv1d_update.default,
                          (p["x"][..., None], p["conv_state"], p["weight"], p["bias"], True,
                           p["seqlens"] if circular else None, backend))


def _decode_step(p):
    from vimd_kernels import causal_conv1d_update, selective_state_update
    x = causal_conv1d_update(p["x"], p["conv_state"], p["weight"], p["bias"], "silu")
    return selective_state_update(p["state"], x, p["dt"], p["A"], p["B"], p["C"], p["D"], p["z"],
                                  p["dt_bias"], True)


@pytest.mark.graph_capture
def test_compile_fullgraph_decode_step_matches_eager():
    """A decoding step (conv update then state update) compiles into one graph; its outputs and the
    states it updates in place are eager's."""
    torch._dynamo.reset()
    base = _step_inputs(torch.Generator().manual_seed(1))
    eager = {k: v.clone() for k, v in base.items()}
    compiled = {k: v.clone() for k, v in base.items()}
    fn = torch.compile(_decode_step, fullgraph=True, backend="inductor")
    for _ in range(3):
        want, got = _decode_step(eager), fn(compiled)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for k in ("state", "conv_state"):
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"{k}: {m}")
