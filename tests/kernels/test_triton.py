"""The Triton backend against the float32 references: every option, ragged lengths, forced tilings
(several row blocks, ragged row blocks, backward segments and L chunks, so the checkpointed
recompute, the three-phase scan, the in-program and ordered partial reductions and the conv
tiles' halos all run on tiny shapes), dtypes, determinism and torch.compile.

A forced tiling is a launch configuration passed to the Triton modules' ``launch_forward`` /
``launch_backward``; without one the tests go through the public ops (the default ``CONFIGS``).

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


def tiled(module, **fields) -> dict:
    """The module's CONFIGS ({"fwd": ..., "bwd": ...}) with ``fields`` set in both kernels' configs."""
    return {k: dataclasses.replace(c, **fields) for k, c in module.CONFIGS.items()}


def _ids(c) -> str:
    return "-".join(f"{k[0]}{v}" for k, v in c.items()) or "default"


# ----------------------------------------------------------------------------- selective scan

def _to(inputs: dict, device) -> dict:
    return {k: None if v is None else v.to(device) for k, v in inputs.items()}


def _scan(x: dict, case: ScanCase, backend, fn=selective_scan_fn):
    return fn(*(x[k] for k in SCAN_ARGS[:8]), case.softplus, True, initial_state=x["initial_state"],
              reverse=case.reverse, backend=backend)


def _scan_launched(x: dict, case: ScanCase, configs: dict, dout, dlast):
    """out, last_state and the gradients (by input name) from the Triton module's launch functions
    with the launch configurations ``configs``."""
    args = [x[k] for k in SCAN_ARGS]
    out, last = scan_triton.launch_forward(*args, case.softplus, case.reverse, config=configs["fwd"])
    grads = scan_triton.launch_backward(*args, dout, dlast, case.softplus, case.reverse,
                                        config=configs["bwd"])
    return out, last, {k: g for k, g in zip(SCAN_ARGS, grads) if x[k] is not None}


def check_scan(case: ScanCase, device, seed: int = 0, configs: dict | None = None) -> None:
    """Forward, last_state and every gradient (through out and last_state) vs the reference: through
    the public op, or with launch ``configs`` through the Triton module's launch functions."""
    inputs = _to(scan_inputs(case, seed), device)
    r = leaves(inputs)
    r_out, r_last = _scan(r, case, None, fn=selective_scan_ref)
    gen = torch.Generator().manual_seed(seed + 1)
    dout = torch.randn(r_out.shape, generator=gen).to(case.dtype).to(device)
    dlast = torch.randn(r_last.shape, generator=gen, dtype=r_last.dtype).to(device)
    torch.autograd.backward([r_out, r_last], [dout, dlast])
    if configs is None:
        x = leaves(inputs)
        out, last = _scan(x, case, "triton")
        torch.autograd.backward([out, last], [dout, dlast])
        grads = {k: x[k].grad for k in SCAN_ARGS if x[k] is not None}
    else:
        out, last, grads = _scan_launched(inputs, case, configs, dout, dlast)
    assert out.dtype == case.dtype and out.shape == r_out.shape
    assert last.dtype == r_last.dtype and last.shape == r_last.shape
    assert_close(out, r_out, "scan", case.dtype, "out")
    assert_close(last, r_last, "scan", case.dtype, "last_state")
    for name, g in grads.items():
        X, want = inputs[name], r[name].grad
        assert g is not None and g.dtype == X.dtype and g.shape == X.shape, name
        assert_close(g, want, "scan", case.dtype, f"d{name}", scale=scan_grad_scale(case, name, X))


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
    (ScanCase(batch=2, dim=8, L=7, N=3, b_kind="g4", c_kind="var", initial_state=True), dict()),
    (ScanCase(batch=1, dim=3, L=1, N=4, b_kind="const", c_kind="const", initial_state=True,
              reverse=True), dict()),
    (ScanCase(batch=2, dim=4, L=10, N=4, dtype=torch.float16, initial_state=True, reverse=True),
     dict(block_d=2, seg=4, chunk_len=4)),
    (ScanCase(batch=2, dim=4, L=10, N=4, dtype=torch.bfloat16, b_kind="g2", c_kind="g2"),
     dict(block_d=2, seg=3, chunk_len=6)),
    (ScanCase(batch=1, dim=4, L=9, N=4, dtype=torch.float16, bc_dtype=torch.float32, b_kind="const"),
     dict(seg=4)),
    (ScanCase(batch=1, dim=3, L=9, N=2, dtype=torch.float64, initial_state=True, reverse=True),
     dict(block_d=2, seg=2, chunk_len=4)),
]


@pytest.mark.interpret
@pytest.mark.parametrize("case,tiling", SCAN_CASES,
                         ids=lambda c: str(c) if isinstance(c, ScanCase) else _ids(c))
def test_scan_interpret(case, tiling):
    configs = tiled(scan_triton, **tiling) if tiling else None
    check_scan(case, _device(torch.cuda.is_available()), configs=configs)


@pytest.mark.interpret
def test_scan_tiling_does_not_change_results():
    """Rows per program, the backward's checkpoint spacing (one segment, ragged segments, one step
    each) and L chunks (none, two ragged, four) give the same outputs and gradients."""
    case = ScanCase(batch=1, dim=4, L=12, N=4, b_kind="g2", initial_state=True)
    x = _to(scan_inputs(case), _device(torch.cuda.is_available()))
    results = []
    for block_d, seg, chunk_len in ((4, 12, None), (2, 5, 10), (1, 1, 3)):
        configs = tiled(scan_triton, block_d=block_d, seg=seg, chunk_len=chunk_len)
        out, last = scan_triton.launch_forward(*(x[k] for k in SCAN_ARGS), case.softplus, case.reverse,
                                               config=configs["fwd"])
        _, _, grads = _scan_launched(x, case, configs, 2 * out, torch.ones_like(last))
        results.append([out, last, *grads.values()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_close(a, b, "scan", case.dtype, "other tiling")


@pytest.mark.interpret
def test_scan_gradients_bitwise_deterministic():
    configs = tiled(scan_triton, block_d=2, seg=2, chunk_len=6)
    case = ScanCase(batch=2, dim=4, L=12, N=4, b_kind="g2", c_kind="var", initial_state=True)
    x = _to(scan_inputs(case), _device(torch.cuda.is_available()))
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(case.batch, case.dim, case.L, generator=gen).to(x["u"].device)
    dlast = torch.randn(case.batch, case.dim, case.N, generator=gen).to(x["u"].device)
    runs = [list(_scan_launched(x, case, configs, dout, dlast)[2].values()) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.interpret
def test_row_views_with_tiling():
    """z (scan) and x (conv) as channel slices of the mixer's xz (a batch stride of 2 * dim * L), with
    forced tilings (L chunks, ragged segments and tiles): the same results as contiguous copies."""
    dev = _device(torch.cuda.is_available())
    case = ScanCase(batch=2, dim=4, L=11, N=4, initial_state=True)
    x = _to(scan_inputs(case), dev)
    xz = torch.randn(case.batch, 2 * case.dim, case.L, device=dev)
    dout = torch.randn(case.batch, case.dim, case.L, device=dev)
    dlast = torch.randn_like(x["initial_state"])
    configs = tiled(scan_triton, block_d=2, seg=4, chunk_len=8)
    runs = []
    for z in (xz[:, case.dim:], xz[:, case.dim:].contiguous()):
        out, last, grads = _scan_launched(dict(x, z=z), case, configs, dout, dlast)
        runs.append([out, last, *grads.values()])
    configs = tiled(conv_triton, block_d=2, block_t=4)
    w, b = torch.randn(case.dim, 4, device=dev), torch.randn(case.dim, device=dev)
    for xs in (xz[:, :case.dim], xz[:, :case.dim].contiguous()):
        runs.append([conv_triton.launch_forward(xs, w, b, True, True, config=configs["fwd"]),
                     *conv_triton.launch_backward(xs, w, b, dout, True, True, config=configs["bwd"])])
    for views, copies in (runs[0:2], runs[2:4]):
        for a, c in zip(views, copies):
            assert torch.equal(a, c)


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

def check_conv(batch, dim, L, width, bias, silu, reverse, dtype, device, seed=0, configs=None):
    """Output and gradients vs the reference: through the public op, or with launch ``configs``
    through the Triton module's launch functions."""
    gen = torch.Generator().manual_seed(seed)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x0 = torch.randn(batch, dim, L, generator=gen).to(dtype).to(device)
    w0 = (torch.randn(dim, width, generator=gen, dtype=pdt) / width ** 0.5).to(device)
    b0 = torch.randn(dim, generator=gen, dtype=pdt).to(device) if bias else None
    act = "silu" if silu else None
    ref = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x0, w0, b0)]
    want = causal_conv1d_ref(*ref, act, reverse=reverse)
    dout = torch.randn(want.shape, generator=gen).to(dtype).to(device)
    want.backward(dout)
    if configs is None:
        args = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x0, w0, b0)]
        out = causal_conv1d_fn(*args, act, reverse=reverse, backend="triton")
        out.backward(dout)
        grads = [a.grad if a is not None else None for a in args]
    else:
        out = conv_triton.launch_forward(x0, w0, b0, silu, reverse, config=configs["fwd"])
        grads = conv_triton.launch_backward(x0, w0, b0, dout, silu, reverse, config=configs["bwd"])
    assert out.dtype == dtype
    assert_close(out, want, "conv", dtype, "out")
    scale = reduction_scale(batch * L)
    for name, a, g, r in zip(("x", "weight", "bias"), (x0, w0, b0), grads, ref):
        if a is not None:
            assert g.dtype == a.dtype
            assert_close(g, r.grad, "conv", dtype, f"d{name}", scale=1.0 if name == "x" else scale)


CONV_CASES = [  # (batch, dim, L, width, bias, silu, reverse, dtype, tiling)
    (2, 4, 13, 2, True, True, False, torch.float32, dict(block_d=2, block_t=4)),
    (1, 3, 9, 3, False, True, True, torch.float32, dict(block_d=2, block_t=4)),
    (2, 4, 11, 4, True, False, True, torch.float32, dict(block_t=4)),
    (1, 5, 19, 5, True, True, True, torch.float32, dict(block_d=4, block_t=2)),
    (1, 4, 17, 6, False, False, False, torch.float32, dict()),
    (2, 2, 5, 7, True, True, False, torch.float32, dict()),
    (1, 4, 3, 8, True, True, True, torch.float32, dict(block_d=2, block_t=2)),
    (2, 4, 10, 4, True, True, False, torch.float16, dict(block_t=4)),
    (2, 4, 10, 4, True, True, True, torch.bfloat16, dict(block_t=4)),
    (1, 3, 9, 4, True, True, True, torch.float64, dict(block_d=2, block_t=4)),
]


@pytest.mark.interpret
@pytest.mark.parametrize("batch,dim,L,width,bias,silu,reverse,dtype,tiling", CONV_CASES)
def test_conv_interpret(batch, dim, L, width, bias, silu, reverse, dtype, tiling):
    check_conv(batch, dim, L, width, bias, silu, reverse, dtype, _device(torch.cuda.is_available()),
               configs=tiled(conv_triton, **tiling) if tiling else None)


@pytest.mark.interpret
def test_conv_gradients_bitwise_deterministic():
    configs = tiled(conv_triton, block_d=2, block_t=4)
    dev = _device(torch.cuda.is_available())
    x, w, b = torch.randn(2, 4, 13, device=dev), torch.randn(4, 4, device=dev), torch.randn(4, device=dev)
    dout = torch.randn_like(x)
    runs = [conv_triton.launch_backward(x, w, b, dout, True, False, config=configs["bwd"])
            for _ in range(2)]
    for g1, g2 in zip(*runs):
        assert torch.equal(g1, g2)


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
def test_mixers_interpret(bidirectional):
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
def test_mixer_op_opcheck_and_compile():
    """The mixer custom op on the Triton backend passes opcheck and compiles with fullgraph=True."""
    from vimd_kernels.mamba_inner.fused import _mixer_fwd
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
