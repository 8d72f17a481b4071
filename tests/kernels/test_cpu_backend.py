"""The C++ CPU backend ("cpu") specifically: every compiled instruction set that this CPU runs,
against the float32 reference and the float64 oracle; chunk and state-block boundaries of the
kernels; float16/bfloat16 conversions; gradcheck in float64; reverse, chaining through
initial_state, bitwise determinism independent of the thread count, and the build itself.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from tests.kernels.helpers import SCAN_ARGS, ScanCase, leaves, reduction_scale, scan_grad_scale, scan_inputs
from tests.kernels.oracle import conv64, scan64
from tests.tolerances import assert_close
from vimd_kernels import causal_conv1d_fn, causal_conv1d_ref, selective_scan_fn, selective_scan_ref
from vimd_kernels.registry import BACKENDS

pytestmark = pytest.mark.skipif(not BACKENDS["cpu"].available(),
                                reason="C++ extension not built (pip install --no-build-isolation -e .)")

if BACKENDS["cpu"].available():
    from vimd_kernels import _C

    ISAS = _C.build_info()["cpu_isas_supported"]
else:
    ISAS = []

F32, F64 = torch.float32, torch.float64


@contextlib.contextmanager
def isa(name: str):
    previous = _C._set_cpu_isa(name)
    try:
        yield
    finally:
        _C._set_cpu_isa(previous)


@contextlib.contextmanager
def num_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- selective scan

def scan_run(fn, x: dict, case: ScanCase, dout, dlast, backend=None):
    """out, last_state and the gradients of <out, dout> + <last_state, dlast> w.r.t. every input."""
    ts = leaves(x) if fn is not scan64 else leaves(x, F64)
    kw = dict(initial_state=ts["initial_state"], reverse=case.reverse)
    args = [ts[k] for k in SCAN_ARGS[:8]]
    if fn is scan64:
        out, last = scan64(*args, delta_softplus=case.softplus, **kw)
        dout, dlast = dout.to(F64), dlast.to(F64)
    else:
        out, last = fn(*args, case.softplus, True, **kw, **({"backend": backend} if backend else {}))
    torch.autograd.backward([out, last], [dout, dlast])
    return out.detach(), last.detach(), {k: t.grad for k, t in ts.items() if t is not None}


def compare_scan(case: ScanCase, got, want, what: str):
    out, last, grads = got
    w_out, w_last, w_grads = want
    x = scan_inputs(case)
    assert out.dtype == case.dtype and last.dtype == (F64 if case.dtype == F64 else F32)
    assert_close(out, w_out, "scan", case.dtype, f"{what} out")
    assert_close(last, w_last, "scan", case.dtype, f"{what} last_state")
    assert set(grads) == set(w_grads)
    for name, g in grads.items():
        assert g.dtype == x[name].dtype and g.shape == x[name].shape, name
        assert_close(g, w_grads[name], "scan", case.dtype, f"{what} d{name}",
                     scale=scan_grad_scale(case, name, x[name]))


def check_scan_case(case: ScanCase, isas=None):
    """cpu (on each ISA) vs the float32 reference and the float64 oracle, forward and gradients."""
    x = scan_inputs(case)
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(x["u"].shape, generator=gen).to(case.dtype)
    dlast = torch.randn(case.batch, case.dim, case.N, generator=gen).to(x["A"].dtype)
    with num_threads(1):  # the oracles are loops of tiny ops: threads only slow them down
        ref = scan_run(selective_scan_ref, x, case, dout, dlast)
        oracle = scan_run(scan64, x, case, dout, dlast)
    for name in isas or ISAS:
        with isa(name):
            got = scan_run(selective_scan_fn, x, case, dout, dlast, backend="cpu")
        compare_scan(case, got, ref, f"{name} vs ref")
        compare_scan(case, got, oracle, f"{name} vs float64 oracle")


# L around the 64-step checkpoint chunks, N needing several blocks of state vectors (33 states =
# 5 vectors of 8 or 3 of 16), ragged N, groups 1/2/4 (mixed: the row split follows their lcm),
# channels spread over several backward row blocks, every option on and off somewhere.
SCAN_CASES = [
    ScanCase(batch=2, dim=3, L=1, N=1, initial_state=True),
    ScanCase(batch=1, dim=4, L=7, N=10, b_kind="const", c_kind="var", reverse=True),
    ScanCase(batch=2, dim=4, L=7, N=16, b_kind="var", c_kind="const", D=False, z=False,
             delta_bias=False, softplus=False),
    ScanCase(batch=1, dim=4, L=64, N=16, initial_state=True, reverse=True),
    ScanCase(batch=1, dim=4, L=65, N=33, b_kind="g2", c_kind="g4", initial_state=True),
    ScanCase(batch=2, dim=6, L=130, N=10, b_kind="g2", c_kind="const", z=False, reverse=True),
    ScanCase(batch=2, dim=8, L=197, N=16, b_kind="g4", c_kind="g4", initial_state=True),
    ScanCase(batch=1, dim=24, L=197, N=1, b_kind="var", c_kind="g2", delta_bias=False, reverse=True),
    ScanCase(batch=2, dim=40, L=197, N=16, D=False, softplus=False),
    ScanCase(batch=1, dim=2, L=197, N=70, b_kind="const", c_kind="const", initial_state=True),
    ScanCase(batch=1, dim=4, L=730, N=16, b_kind="g2", c_kind="var", initial_state=True, reverse=True),
    ScanCase(batch=1, dim=2, L=730, N=10, b_kind="const", c_kind="g2"),
    # rows over 1024 steps: the backward recomputes 64-step chunks from checkpoints
    ScanCase(batch=1, dim=2, L=1100, N=10, b_kind="g2", c_kind="var", initial_state=True,
             reverse=True),
]


@pytest.mark.parametrize("case", SCAN_CASES, ids=str)
def test_scan_matches_reference_and_oracle(case):
    check_scan_case(case)


SCAN_DTYPE_CASES = [
    ScanCase(batch=2, dim=4, L=197, N=16, dtype=torch.float16, initial_state=True, reverse=True),
    ScanCase(batch=2, dim=4, L=130, N=10, dtype=torch.bfloat16, b_kind="g2", c_kind="const"),
    ScanCase(batch=1, dim=4, L=70, N=16, dtype=torch.float16, bc_dtype=F32, b_kind="g4"),
    ScanCase(batch=1, dim=4, L=70, N=1, dtype=torch.bfloat16, bc_dtype=F32, reverse=True),
]


@pytest.mark.parametrize("case", SCAN_DTYPE_CASES, ids=str)
def test_scan_half_dtypes(case):
    check_scan_case(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    ScanCase(batch=1, dim=4, L=2304, N=16, initial_state=True),
    ScanCase(batch=1, dim=4, L=2304, N=16, b_kind="g2", c_kind="g2", reverse=True,
             dtype=torch.bfloat16),
], ids=str)
def test_scan_long(case):
    check_scan_case(case)


GRADCHECK_CASES = [
    ScanCase(batch=1, dim=2, L=5, N=3, initial_state=True, dtype=F64),
    ScanCase(batch=2, dim=4, L=4, N=2, b_kind="g2", c_kind="const", reverse=True,
             initial_state=True, dtype=F64),
    ScanCase(batch=1, dim=2, L=3, N=5, b_kind="const", c_kind="g2", D=False, z=False,
             softplus=False, dtype=F64),
    ScanCase(batch=1, dim=1, L=67, N=2, reverse=True, initial_state=True, dtype=F64),
    ScanCase(batch=1, dim=1, L=1030, N=2, reverse=True, initial_state=True, dtype=F64),  # chunked
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_scan_gradcheck_float64(case):
    x = scan_inputs(case)
    names = [k for k in SCAN_ARGS if x[k] is not None]

    def f(*ts):
        a = dict(x, **dict(zip(names, ts)))
        return selective_scan_fn(*(a[k] for k in SCAN_ARGS[:8]), case.softplus, True,
                                 initial_state=a["initial_state"], reverse=case.reverse,
                                 backend="cpu")

    ts = [x[k].detach().clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(f, ts, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=case.L > 100)


@pytest.mark.parametrize("b_kind", ["var", "g2", "const"])
def test_scan_reverse_is_flip_of_forward(b_kind):
    case = ScanCase(batch=2, dim=4, L=150, N=10, b_kind=b_kind, c_kind="var", initial_state=True)
    x = scan_inputs(case)
    gen = torch.Generator().manual_seed(2)
    dout = torch.randn(x["u"].shape, generator=gen)
    dlast = torch.randn(2, 4, 10, generator=gen)
    flip = lambda t: t.flip(-1) if t is not None and t.dim() >= 3 and t.shape[-1] == case.L else t  # noqa: E731
    rev = scan_run(selective_scan_fn, x, dataclasses.replace(case, reverse=True), dout, dlast, "cpu")
    fwd = scan_run(selective_scan_fn, {k: flip(v) for k, v in x.items()}, case, flip(dout), dlast,
                   "cpu")
    assert_close(rev[0], flip(fwd[0]), "scan", F32, "out")
    assert_close(rev[1], fwd[1], "scan", F32, "last_state")
    for name, g in rev[2].items():
        assert_close(g, flip(fwd[2][name]), "scan", F32, f"d{name}",
                     scale=scan_grad_scale(case, name, x[name]))


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_chaining_through_initial_state(reverse):
    """Scanning L in two pieces, the second starting from the first's last_state, is one scan."""
    case = ScanCase(batch=2, dim=4, L=150, N=16, initial_state=True, reverse=reverse)
    x = leaves(scan_inputs(case))
    full, full_last = selective_scan_fn(*(x[k] for k in SCAN_ARGS[:8]), True, True,
                                        initial_state=x["initial_state"], reverse=reverse,
                                        backend="cpu")
    gen = torch.Generator().manual_seed(3)
    dout = torch.randn(full.shape, generator=gen)
    dlast = torch.randn(full_last.shape, generator=gen)
    want = torch.autograd.grad([full, full_last], [x[k] for k in SCAN_ARGS], [dout, dlast])

    first, second = (slice(90, 150), slice(0, 90)) if reverse else (slice(0, 90), slice(90, 150))
    part = lambda t, s: t[..., s] if t.dim() >= 3 and t.shape[-1] == case.L else t  # noqa: E731
    state = x["initial_state"]
    outs = {}
    for s in (first, second):
        out, state = selective_scan_fn(*(part(x[k], s) for k in SCAN_ARGS[:8]), True, True,
                                       initial_state=state, reverse=reverse, backend="cpu")
        outs[s.start] = out
    out = torch.cat([outs[0], outs[90]], dim=-1)
    assert_close(out, full, "scan", F32, "out")
    assert_close(state, full_last, "scan", F32, "last_state")
    got = torch.autograd.grad([out, state], [x[k] for k in SCAN_ARGS], [dout, dlast])
    for name, g, w in zip(SCAN_ARGS, got, want):
        assert_close(g, w, "scan", F32, f"d{name}", scale=scan_grad_scale(case, name, x[name]))


def _scan_grads(x, case):
    _, _, grads = scan_run(selective_scan_fn, x, case, torch.ones(x["u"].shape),
                           torch.ones(case.batch, case.dim, case.N), "cpu")
    return grads


@pytest.mark.parametrize("b_kind,c_kind", [("var", "g4"), ("const", "g2")])
def test_scan_gradients_bitwise_deterministic(b_kind, c_kind):
    """Same gradients, bit for bit, run after run and whatever the number of threads."""
    case = ScanCase(batch=3, dim=40, L=140, N=16, b_kind=b_kind, c_kind=c_kind, initial_state=True)
    x = scan_inputs(case)
    with num_threads(2):
        first = _scan_grads(x, case)
        second = _scan_grads(x, case)
    with num_threads(1):
        single = _scan_grads(x, case)
    for name in first:
        assert torch.equal(first[name], second[name]), name
        assert torch.equal(first[name], single[name]), name


def _pool_case_result(seed: int):
    """The gradients of a scan big enough to be split over the worker threads."""
    case = ScanCase(batch=2, dim=40, L=197, N=16, b_kind="g2", c_kind="var", initial_state=True)
    return _scan_grads(scan_inputs(case, seed), case)


def test_concurrent_callers_share_the_workers():
    """Python threads calling the kernels at once get the results of one call at a time, bit for bit."""
    seeds = [s for s in range(6) for _ in range(3)]
    with num_threads(2):
        want = {s: _pool_case_result(s) for s in set(seeds)}
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            got = list(ex.map(_pool_case_result, seeds))
    for s, grads in zip(seeds, got):
        for name, g in grads.items():
            assert torch.equal(g, want[s][name]), (s, name)


def test_scan_isas_agree():
    """Every ISA computes the same thing (up to exp/summation-order rounding)."""
    case = ScanCase(batch=2, dim=8, L=100, N=33, b_kind="g2", initial_state=True)
    x = scan_inputs(case)
    dout, dlast = torch.randn(x["u"].shape), torch.randn(2, 8, 33)
    runs = {}
    for name in ISAS:
        with isa(name):
            runs[name] = scan_run(selective_scan_fn, x, case, dout, dlast, "cpu")
    base = runs[ISAS[0]]
    for name, got in runs.items():
        compare_scan(case, got, base, f"{name} vs {ISAS[0]}")


# ----------------------------------------------------------------------------- causal conv1d

CONV_CASES = [  # (batch, dim, L, width, bias, silu, reverse, dtype)
    (2, 3, 1, 2, True, True, False, F32),
    (1, 4, 7, 3, False, True, True, F32),
    (2, 3, 197, 4, True, True, False, F32),
    (2, 3, 197, 4, True, False, True, F32),
    (1, 5, 37, 5, True, False, False, F32),
    (1, 2, 730, 6, False, True, False, F32),
    (2, 3, 19, 7, True, True, True, F32),
    (1, 4, 33, 8, True, True, False, F32),
    (2, 3, 197, 4, True, True, True, torch.float16),
    (2, 3, 130, 8, False, True, False, torch.bfloat16),
    (1, 2, 50, 3, True, False, True, F64),
]


def conv_run(fn, x, w, b, silu, reverse, dout, **kw):
    xs = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = fn(xs[0], xs[1], xs[2], "silu" if silu else None, reverse=reverse, **kw)
    out.backward(dout)
    return out.detach(), [t.grad if t is not None else None for t in xs]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(str(v).replace("torch.", "") for v in c))
def test_conv_matches_reference_and_oracle(case):
    batch, dim, L, width, has_bias, silu, reverse, dtype = case
    gen = torch.Generator().manual_seed(0)
    pdt = F64 if dtype == F64 else F32
    x = torch.randn(batch, dim, L, generator=gen).to(dtype)
    w = (0.5 * torch.randn(dim, width, generator=gen)).to(pdt)
    b = torch.randn(dim, generator=gen).to(pdt) if has_bias else None
    dout = torch.randn(batch, dim, L, generator=gen).to(dtype)
    ref = conv_run(causal_conv1d_ref, x, w, b, silu, reverse, dout)
    x64 = [t.to(F64) if t is not None else None for t in (x, w, b)]
    oracle = conv_run(lambda x_, w_, b_, act, reverse: conv64(x_, w_, b_, act == "silu", reverse),
                      *x64, silu, reverse, dout.to(F64))
    scale = reduction_scale(batch * L)
    for name in ISAS:
        with isa(name):
            out, grads = conv_run(causal_conv1d_fn, x, w, b, silu, reverse, dout, backend="cpu")
        assert out.dtype == dtype
        for want, what in ((ref, "ref"), (oracle, "oracle")):
            assert_close(out, want[0], "conv", dtype, f"{name} vs {what}: out")
            for gname, g, wg, t in zip(("x", "weight", "bias"), grads, want[1], (x, w, b)):
                if t is None:
                    assert g is None
                    continue
                assert g.dtype == t.dtype and g.shape == t.shape
                assert_close(g, wg, "conv", dtype, f"{name} vs {what}: d{gname}",
                             scale=1.0 if gname == "x" else scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv_weight_in_input_dtype(dtype):
    """Weight and bias may come in x's 16-bit dtype; their gradients come back in it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 60, generator=gen).to(dtype)
    w, b = (0.5 * torch.randn(4, 4, generator=gen)).to(dtype), torch.randn(4, generator=gen).to(dtype)
    dout = torch.randn(2, 4, 60, generator=gen).to(dtype)
    want = conv_run(causal_conv1d_ref, x, w, b, True, True, dout)
    got = conv_run(causal_conv1d_fn, x, w, b, True, True, dout, backend="cpu")
    assert_close(got[0], want[0], "conv", dtype, "out")
    for name, g, wg, scale in zip(("x", "weight", "bias"), got[1], want[1],
                                  (1.0, reduction_scale(120), reduction_scale(120))):
        assert g.dtype == dtype
        assert_close(g, wg, "conv", dtype, f"d{name}", scale=scale)


@pytest.mark.parametrize("reverse", [False, True])
def test_conv_gradcheck_float64(reverse):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 11, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(3, 1, 4, generator=gen, dtype=F64, requires_grad=True)  # nn.Conv1d layout
    b = torch.randn(3, generator=gen, dtype=F64, requires_grad=True)
    f = lambda x_, w_, b_: causal_conv1d_fn(x_, w_, b_, "silu", reverse=reverse, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_conv_weight_gradient_bitwise_deterministic():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, 300, generator=gen)
    w, b = torch.randn(16, 4, generator=gen), torch.randn(16, generator=gen)
    dout = torch.randn(4, 16, 300, generator=gen)
    runs = []
    for n in (2, 2, 1):
        with num_threads(n):
            runs.append(conv_run(causal_conv1d_fn, x, w, b, True, False, dout, backend="cpu")[1])
    for r in runs[1:]:
        assert all(torch.equal(g, h) for g, h in zip(r, runs[0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_conversions_are_exact(dtype):
    """All 2^16 bit patterns go through the kernels' own 16-bit <-> float conversions: a single tap
    w (the other tap reads a zero) gives round(float(x) * w), which must match torch's
    round-to-nearest-even bit for bit: subnormals, overflow, inf and nan included."""
    vals = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = torch.zeros(1, 1, 2 * vals.numel(), dtype=dtype)
    x[0, 0, 1::2] = vals
    for name in ISAS:
        with isa(name):
            for scale in (1.0, 3.0, 0.3, 1e-3, 700.0):
                y = causal_conv1d_fn(x, torch.tensor([[0.0, scale]]), backend="cpu")[0, 0, 1::2]
                want = (vals.float() * scale + 0.0).to(dtype)
                nan = want.isnan()
                assert torch.equal(y.isnan(), nan), (name, scale)
                assert torch.equal(y[~nan].view(torch.int16), want[~nan].view(torch.int16)), (name, scale)


# ----------------------------------------------------------------------------- build

def test_build_info_and_isa_selection():
    info = _C.build_info()
    assert "default" in info["cpu_isas_compiled"]
    assert info["cpu_isa"] in info["cpu_isas_supported"]
    assert set(info["cpu_isas_supported"]) <= set(info["cpu_isas_compiled"])
    assert isinstance(info["cuda"], bool)
    with pytest.raises(RuntimeError, match="isa"):
        _C._set_cpu_isa("sse9")
    assert _C._set_cpu_isa("auto") == info["cpu_isa"]


LAYOUT_CONSTANTS = (
    "cpu_scan_chunk", "cpu_scan_whole_row", "cpu_conv_max_width",
    "cuda_scan_max_state", "cuda_bwd_rows", "cuda_bwd_segment",
    "cuda_fwd_rows", "cuda_fwd_steps", "cuda_fwd_state_group", "cuda_fwd_max_seqlen",
    "cuda_fwd_blocks", "cuda_fwd_blocks_const_bc",
    "cuda_conv_items", "cuda_conv_max_width", "cuda_conv_threads",
)


def test_layout_constants_are_exported_by_every_build():
    """The kernels' layout constants (csrc/cpu/kernels.h, csrc/cuda/layout.h), for the Python side;
    the CPU-only build exports the CUDA kernels' too (the launch planning runs without a GPU)."""
    values = {name: getattr(_C, name) for name in LAYOUT_CONSTANTS}
    assert all(isinstance(v, int) and v > 0 for v in values.values()), values
    assert _C.cuda_bwd_rows == 32 and _C.cuda_bwd_segment == _C.cuda_fwd_steps  # a block is one warp
    assert _C.cuda_fwd_rows % 32 == 0 and 32 % _C.cuda_fwd_steps == 0


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_runtime_dispatch_follows_torch_cpu_capability(capability):
    """With torch capped at a lower ISA (as on a CPU without AVX-512 / AVX2), the kernels of that
    ISA are picked at import and give correct results."""
    if capability not in ISAS:
        pytest.skip(f"{capability} kernels not runnable here")
    code = (
        "import torch\n"
        "from vimd_kernels import _C, selective_scan_fn, selective_scan_ref\n"
        "print(_C.build_info()['cpu_isa'])\n"
        "g = torch.Generator().manual_seed(0)\n"
        "u, dl, z = (torch.randn(2, 4, 50, generator=g) for _ in range(3))\n"
        "A = -torch.rand(4, 16, generator=g) - 0.5\n"
        "B, C = torch.randn(2, 16, 50, generator=g), torch.randn(2, 16, 50, generator=g)\n"
        "args = (u, dl, A, B, C, torch.ones(4), z, None, True)\n"
        "err = (selective_scan_fn(*args, backend='cpu') - selective_scan_ref(*args)).abs().max()\n"
        "print(float(err))\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    chosen, err = res.stdout.split()
    assert chosen == capability
    assert float(err) < 1e-4


def test_kernel_entry_points_check_arguments():
    """The C++ checks are a second line of defence behind vimd_kernels.checks."""
    u = torch.randn(1, 4, 8)
    A = -torch.rand(4, 3)
    with pytest.raises(RuntimeError, match="A must be"):
        torch.ops.vimd.selective_scan_fwd_cpu(u, u, A[:2], torch.randn(1, 3, 8), torch.randn(1, 3, 8),
                                              None, None, None, None, False, False)
    with pytest.raises(RuntimeError, match="B must have shape"):
        torch.ops.vimd.selective_scan_fwd_cpu(u, u, A, torch.randn(1, 3, 9), torch.randn(1, 3, 8),
                                              None, None, None, None, False, False)
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.vimd.causal_conv1d_fwd_cpu(u, torch.randn(4, 9), None, False, False)
