"""The Triton backend against the float32 references: every option, ragged lengths, forced tilings
(several row blocks, ragged row blocks, backward segments and L chunks, so the checkpointed
recompute, the three-phase scan, the in-program and ordered partial reductions and the conv
tiles' halos all run on tiny shapes), dtypes, determinism and torch.compile.

``interpret`` tests run the kernels on CPU tensors under TRITON_INTERPRET=1 (tiny shapes);
``cuda`` tests run the same checks at real shapes on a GPU.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.kernels.helpers import SCAN_ARGS, ScanCase, leaves, reduction_scale, scan_grad_scale, scan_inputs
from tests.tolerances import assert_close
from vimd_kernels import (bimamba_v2_inner_fn, bimamba_v2_inner_ref, causal_conv1d_fn, causal_conv1d_ref,
                          mamba_inner_fn, mamba_inner_ref, selective_scan_fn, selective_scan_ref)

triton = pytest.importorskip("triton")

from vimd_kernels.causal_conv1d import triton as conv_triton  # noqa: E402
from vimd_kernels.selective_scan import triton as scan_triton  # noqa: E402


def _device(on_gpu: bool) -> torch.device:
    return torch.device("cuda" if on_gpu else "cpu")


@pytest.fixture
def tune(monkeypatch):
    """Force the kernels' tiling for one test (restored afterwards)."""
    def set_tune(module, **kw):
        for k, v in kw.items():
            monkeypatch.setitem(module.TUNE, k, v)
    return set_tune


# ----------------------------------------------------------------------------- selective scan

def _to(inputs: dict, device) -> dict:
    return {k: None if v is None else v.to(device) for k, v in inputs.items()}


def _scan(x: dict, case: ScanCase, backend, fn=selective_scan_fn):
    return fn(*(x[k] for k in SCAN_ARGS[:8]), case.softplus, True, initial_state=x["initial_state"],
              reverse=case.reverse, backend=backend)


def check_scan(case: ScanCase, device, seed: int = 0) -> None:
    """Forward, last_state and every gradient (through out and last_state) vs the reference."""
    inputs = _to(scan_inputs(case, seed), device)
    x, r = leaves(inputs), leaves(inputs)
    out, last = _scan(x, case, "triton")
    r_out, r_last = _scan(r, case, None, fn=selective_scan_ref)
    assert out.dtype == case.dtype and out.shape == r_out.shape
    assert last.dtype == r_last.dtype and last.shape == r_last.shape
    assert_close(out, r_out, "scan", case.dtype, "out")
    assert_close(last, r_last, "scan", case.dtype, "last_state")
    gen = torch.Generator().manual_seed(seed + 1)
    dout = torch.randn(out.shape, generator=gen).to(case.dtype).to(device)
    dlast = torch.randn(last.shape, generator=gen, dtype=last.dtype).to(device)
    torch.autograd.backward([out, last], [dout, dlast])
    torch.autograd.backward([r_out, r_last], [dout, dlast])
    for name in SCAN_ARGS:
        if x[name] is None:
            continue
        g, want = x[name].grad, r[name].grad
        assert g is not None and g.dtype == x[name].dtype and g.shape == x[name].shape, name
        assert_close(g, want, "scan", case.dtype, f"d{name}", scale=scan_grad_scale(case, name, x[name]))


# (case, forced tiling); seg and chunk_len small enough that L spans several backward segments and
# L chunks (the three-phase scan), the last ones ragged.
SCAN_CASES = [
    (ScanCase(batch=2, dim=4, L=13, N=4, initial_state=True), dict(block_d=2, seg=4, chunk_len=8)),
    (ScanCase(batch=1, dim=6, L=17, N=10, b_kind="g2", c_kind="g2", initial_state=True, reverse=True),
     dict(block_d=4, seg=5, chunk_len=10)),
    (ScanCase(batch=2, dim=4, L=11, N=16, b_kind="const", c_kind="var", z=False, reverse=True),
     dict(block_d=2, seg=3, chunk_len=6)),
    (ScanCase(batch=1, dim=5, L=9, N=1, b_kind="var", c_kind="const", D=False, delta_bias=False,
              softplus=False, initial_state=True), dict(block_d=2, seg=2, chunk_len=4)),
    (ScanCase(batch=2, dim=8, L=7, N=3, b_kind="g4", c_kind="var", initial_state=True),
     dict(block_d=None, seg=None, chunk_len=None)),
    (ScanCase(batch=1, dim=3, L=1, N=4, b_kind="const", c_kind="const", initial_state=True,
              reverse=True), dict(block_d=None, seg=None, chunk_len=None)),
    (ScanCase(batch=2, dim=4, L=10, N=4, dtype=torch.float16, initial_state=True, reverse=True),
     dict(block_d=2, seg=4, chunk_len=4)),
    (ScanCase(batch=2, dim=4, L=10, N=4, dtype=torch.bfloat16, b_kind="g2", c_kind="g2"),
     dict(block_d=2, seg=3, chunk_len=6)),
    (ScanCase(batch=1, dim=4, L=9, N=4, dtype=torch.float16, bc_dtype=torch.float32, b_kind="const"),
     dict(block_d=None, seg=4, chunk_len=None)),
    (ScanCase(batch=1, dim=3, L=9, N=2, dtype=torch.float64, initial_state=True, reverse=True),
     dict(block_d=2, seg=2, chunk_len=4)),
]


@pytest.mark.interpret
@pytest.mark.parametrize("case,tiling", SCAN_CASES, ids=lambda c: str(c) if isinstance(c, ScanCase) else
                         "-".join(f"{k[0]}{v}" for k, v in c.items()))
def test_scan_interpret(case, tiling, tune):
    tune(scan_triton, **tiling)
    check_scan(case, _device(torch.cuda.is_available()))


@pytest.mark.interpret
def test_scan_tiling_does_not_change_results(tune):
    """Rows per program, the backward's checkpoint spacing (one segment, ragged segments, one step
    each) and L chunks (none, two ragged, four) give the same outputs and gradients."""
    case = ScanCase(batch=1, dim=4, L=12, N=4, b_kind="g2", initial_state=True)
    dev = _device(torch.cuda.is_available())
    inputs = _to(scan_inputs(case), dev)
    results = []
    for block_d, seg, chunk_len in ((4, 12, None), (2, 5, 10), (1, 1, 3)):
        tune(scan_triton, block_d=block_d, seg=seg, chunk_len=chunk_len)
        x = leaves(inputs)
        out, last = _scan(x, case, "triton")
        (out.square().sum() + last.sum()).backward()
        results.append([out, last] + [x[k].grad for k in SCAN_ARGS if x[k] is not None])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_close(a, b, "scan", case.dtype, "other tiling")


@pytest.mark.interpret
def test_scan_gradients_bitwise_deterministic(tune):
    tune(scan_triton, block_d=2, seg=2, chunk_len=6)
    case = ScanCase(batch=2, dim=4, L=12, N=4, b_kind="g2", c_kind="var", initial_state=True)
    inputs = _to(scan_inputs(case), _device(torch.cuda.is_available()))
    runs = []
    for _ in range(2):
        x = leaves(inputs)
        out, last = _scan(x, case, "triton")
        (out.sum() + last.square().sum()).backward()
        runs.append([x[k].grad for k in SCAN_ARGS if x[k] is not None])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


SCAN_GPU_CASES = [
    ScanCase(batch=4, dim=384, L=197, N=16, initial_state=True),  # Vim-Ti stride 16
    ScanCase(batch=2, dim=384, L=730, N=16, reverse=True),  # Vim-Ti stride 8, backward branch
    ScanCase(batch=1, dim=120, L=4096, N=16, initial_state=True),  # SR shape: chunked over L
    ScanCase(batch=2, dim=192, L=2304, N=16, b_kind="g4", c_kind="g4", reverse=True),
    ScanCase(batch=2, dim=64, L=197, N=10, b_kind="const", c_kind="var", z=False),
    ScanCase(batch=2, dim=64, L=1, N=1, initial_state=True),
    ScanCase(batch=4, dim=384, L=197, N=16, dtype=torch.float16, initial_state=True),
    ScanCase(batch=4, dim=384, L=197, N=16, dtype=torch.bfloat16, reverse=True),
]


@pytest.mark.cuda
@pytest.mark.parametrize("case", SCAN_GPU_CASES, ids=str)
def test_scan_cuda(case):
    check_scan(case, torch.device("cuda"))


@pytest.mark.cuda
def test_scan_cuda_deterministic_long_sequence():
    case = ScanCase(batch=1, dim=120, L=16384, N=16, initial_state=True)
    inputs = _to(scan_inputs(case), "cuda")
    runs = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            x = leaves(inputs)
            out, last = _scan(x, case, "triton")
            (out.sum() + last.sum()).backward()
            runs.append([x[k].grad for k in SCAN_ARGS if x[k] is not None])
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- causal conv1d

def check_conv(batch, dim, L, width, bias, silu, reverse, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x0 = torch.randn(batch, dim, L, generator=gen).to(dtype).to(device)
    w0 = (torch.randn(dim, width, generator=gen, dtype=pdt) / width ** 0.5).to(device)
    b0 = torch.randn(dim, generator=gen, dtype=pdt).to(device) if bias else None
    act = "silu" if silu else None
    args = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x0, w0, b0)]
    ref = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x0, w0, b0)]
    out = causal_conv1d_fn(*args, act, reverse=reverse, backend="triton")
    want = causal_conv1d_ref(*ref, act, reverse=reverse)
    assert out.dtype == dtype
    assert_close(out, want, "conv", dtype, "out")
    dout = torch.randn(out.shape, generator=gen).to(dtype).to(device)
    out.backward(dout)
    want.backward(dout)
    scale = reduction_scale(batch * L)
    for name, a, r in zip(("x", "weight", "bias"), args, ref):
        if a is not None:
            assert a.grad.dtype == a.dtype
            assert_close(a.grad, r.grad, "conv", dtype, f"d{name}", scale=1.0 if name == "x" else scale)


CONV_CASES = [  # (batch, dim, L, width, bias, silu, reverse, dtype, tiling)
    (2, 4, 13, 2, True, True, False, torch.float32, dict(block_d=2, block_t=4)),
    (1, 3, 9, 3, False, True, True, torch.float32, dict(block_d=2, block_t=4)),
    (2, 4, 11, 4, True, False, True, torch.float32, dict(block_d=None, block_t=4)),
    (1, 5, 19, 5, True, True, True, torch.float32, dict(block_d=4, block_t=2)),
    (1, 4, 17, 6, False, False, False, torch.float32, dict(block_d=None, block_t=None)),
    (2, 2, 5, 7, True, True, False, torch.float32, dict(block_d=None, block_t=None)),
    (1, 4, 3, 8, True, True, True, torch.float32, dict(block_d=2, block_t=2)),
    (2, 4, 10, 4, True, True, False, torch.float16, dict(block_d=None, block_t=4)),
    (2, 4, 10, 4, True, True, True, torch.bfloat16, dict(block_d=None, block_t=4)),
    (1, 3, 9, 4, True, True, True, torch.float64, dict(block_d=2, block_t=4)),
]


@pytest.mark.interpret
@pytest.mark.parametrize("batch,dim,L,width,bias,silu,reverse,dtype,tiling", CONV_CASES)
def test_conv_interpret(batch, dim, L, width, bias, silu, reverse, dtype, tiling, tune):
    tune(conv_triton, **tiling)
    check_conv(batch, dim, L, width, bias, silu, reverse, dtype, _device(torch.cuda.is_available()))


@pytest.mark.interpret
def test_conv_gradients_bitwise_deterministic(tune):
    tune(conv_triton, block_d=2, block_t=4)
    dev = _device(torch.cuda.is_available())
    x0, w0, b0 = torch.randn(2, 4, 13, device=dev), torch.randn(4, 4, device=dev), torch.randn(4, device=dev)
    grads = []
    for _ in range(2):
        x, w, b = (t.clone().requires_grad_(True) for t in (x0, w0, b0))
        causal_conv1d_fn(x, w, b, "silu", backend="triton").square().sum().backward()
        grads.append((x.grad, w.grad, b.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("width", range(2, 9))
@pytest.mark.parametrize("L,reverse,dtype", [(197, False, torch.float32), (4096, True, torch.float32),
                                             (730, True, torch.float16), (197, False, torch.bfloat16)])
def test_conv_cuda(width, L, reverse, dtype):
    check_conv(2, 384, L, width, True, True, reverse, dtype, torch.device("cuda"))


# ----------------------------------------------------------------------------- mixers and compile

def _mixer_weights(d_model, d_inner, N, rank, gen, device):
    def branch():
        return dict(
            conv1d_weight=torch.randn(d_inner, 1, 4, generator=gen) / 2,
            conv1d_bias=torch.randn(d_inner, generator=gen) * 0.1,
            x_proj_weight=torch.randn(rank + 2 * N, d_inner, generator=gen) / d_inner ** 0.5,
            delta_proj_weight=torch.randn(d_inner, rank, generator=gen) / rank ** 0.5,
            A=-torch.exp(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(d_inner, 1)),
            D=torch.randn(d_inner, generator=gen),
            delta_bias=torch.rand(d_inner, generator=gen) * 0.5 - 2.0,
        )
    w = dict(fwd=branch(), bwd=branch(), out_proj_weight=torch.randn(d_model, d_inner, generator=gen) / d_inner ** 0.5)
    return {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in w.items()}


def _leafify(w):
    if isinstance(w, dict):
        return {k: _leafify(v) for k, v in w.items()}
    return w.detach().clone().requires_grad_(True)


def _flat(w):
    return [t for v in w.values() for t in (_flat(v) if isinstance(v, dict) else [v])]


def _run_mixer(fn, xz, w, bidirectional, backend):
    f = w["fwd"]
    if not bidirectional:
        return fn(xz, f["conv1d_weight"], f["conv1d_bias"], f["x_proj_weight"], f["delta_proj_weight"],
                  w["out_proj_weight"], None, f["A"], None, None, f["D"], f["delta_bias"], True,
                  backend=backend)
    b = w["bwd"]
    return fn(xz, f["conv1d_weight"], f["conv1d_bias"], f["x_proj_weight"], f["delta_proj_weight"],
              f["A"], f["D"], f["delta_bias"], b["conv1d_weight"], b["conv1d_bias"], b["x_proj_weight"],
              b["delta_proj_weight"], b["A"], b["D"], b["delta_bias"], w["out_proj_weight"], None, True,
              backend=backend)


def check_mixer(batch, d_model, L, N, bidirectional, device):
    gen = torch.Generator().manual_seed(0)
    d_inner, rank = 2 * d_model, max(1, -(-d_model // 16))
    w0 = _mixer_weights(d_model, d_inner, N, rank, gen, device)
    xz0 = torch.randn(batch, 2 * d_inner, L, generator=gen).to(device)
    xz, w = xz0.clone().requires_grad_(True), _leafify(w0)
    xz_r, w_r = xz0.clone().requires_grad_(True), _leafify(w0)
    ref_fn = bimamba_v2_inner_ref if bidirectional else mamba_inner_ref
    fn = bimamba_v2_inner_fn if bidirectional else mamba_inner_fn
    out = _run_mixer(fn, xz, w, bidirectional, "triton")
    want = _run_mixer(ref_fn, xz_r, w_r, bidirectional, None)
    assert_close(out, want, "scan", torch.float32, "mixer out")
    dout = torch.randn(out.shape, generator=gen).to(device)
    out.backward(dout)
    want.backward(dout)
    assert_close(xz.grad, want_grad := xz_r.grad, "scan", torch.float32, "dxz")
    del want_grad
    scale = reduction_scale(batch * L)
    for a, r in zip(_flat(w), _flat(w_r)):
        if r.grad is None:
            assert a.grad is None
            continue
        assert_close(a.grad, r.grad, "scan", torch.float32, f"weight grad {tuple(a.shape)}", scale=scale)


@pytest.mark.interpret
@pytest.mark.parametrize("bidirectional", [False, True], ids=["mamba_inner", "bimamba_inner"])
def test_mixers_interpret(bidirectional, tune):
    tune(scan_triton, seg=4, chunk_len=8)
    tune(conv_triton, block_t=4)
    check_mixer(2, 4, 11, 4, bidirectional, _device(torch.cuda.is_available()))


@pytest.mark.cuda
@pytest.mark.parametrize("bidirectional", [False, True], ids=["mamba_inner", "bimamba_inner"])
def test_mixers_cuda(bidirectional):
    check_mixer(2, 192, 197, 16, bidirectional, torch.device("cuda"))


def _compiled_step(backend_compiler, device):
    case = ScanCase(batch=1, dim=4, L=8, N=4, initial_state=True, reverse=True)
    x = leaves(_to(scan_inputs(case), device))

    def step(x):
        out, last = _scan(x, case, "triton")
        y = causal_conv1d_fn(out, torch.ones(case.dim, 4, device=device), None, "silu", backend="triton")
        return y.sum() + last.sum()

    compiled = torch.compile(step, fullgraph=True, backend=backend_compiler)
    loss = compiled(x)
    loss.backward()
    grads = [x[k].grad for k in SCAN_ARGS if x[k] is not None]
    x2 = leaves(_to(scan_inputs(case), device))
    step(x2).backward()
    assert_close(loss, step(x2).detach(), "scan", torch.float32, "compiled loss")
    for g, k in zip(grads, [k for k in SCAN_ARGS if x2[k] is not None]):
        assert_close(g, x2[k].grad, "scan", torch.float32, f"compiled d{k}", scale=reduction_scale(8))


@pytest.mark.interpret
def test_compile_fullgraph_no_graph_break():
    """fullgraph=True raises on any graph break; aot_eager keeps it cheap on the CPU."""
    torch._dynamo.reset()
    _compiled_step("aot_eager", _device(torch.cuda.is_available()))


@pytest.mark.cuda
def test_compile_fullgraph_inductor_cuda():
    torch._dynamo.reset()
    _compiled_step("inductor", torch.device("cuda"))


@pytest.mark.interpret
def test_mixer_op_opcheck_and_compile(tune):
    """The mixer custom op on the Triton backend passes opcheck and compiles with fullgraph=True."""
    from vimd_kernels.mamba_inner.fused import _mixer_fwd
    tune(scan_triton, seg=4, chunk_len=8)
    tune(conv_triton, block_t=4)
    dev = _device(torch.cuda.is_available())
    gen = torch.Generator().manual_seed(0)
    w = _mixer_weights(4, 8, 4, 1, gen, dev)
    f = w["fwd"]
    xz = torch.randn(1, 16, 9, generator=gen).to(dev).requires_grad_(True)
    one = lambda t: t.detach().unsqueeze(0)  # noqa: E731  (one direction of stacked weights)
    args = (xz, one(f["conv1d_weight"].reshape(8, 4)), one(f["conv1d_bias"]), one(f["x_proj_weight"]),
            one(f["delta_proj_weight"]), one(f["A"]), one(f["D"]), one(f["delta_bias"]), True, "triton")
    torch.library.opcheck(_mixer_fwd, args, test_utils=("test_schema", "test_autograd_registration",
                                                          "test_faketensor"))
    torch._dynamo.reset()
    run = lambda xz: _mixer_fwd(xz, *args[1:]).square().sum()  # noqa: E731
    loss = torch.compile(run, fullgraph=True, backend="aot_eager")(xz)
    (g,) = torch.autograd.grad(loss, xz)
    xz2 = xz.detach().clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(run(xz2), xz2)
    assert_close(g, g2, "scan", torch.float32, "compiled dxz")
