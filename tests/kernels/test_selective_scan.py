"""selective_scan_fn on every available backend vs the float32 reference and the float64 oracle."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.kernels.helpers import (SCAN_ARGS, ScanCase, backend_params, leaves, scan_grad_scale,
                                   scan_inputs)
from tests.kernels.oracle import scan64
from tests.tolerances import assert_close
from vimd_kernels import selective_scan_fn, selective_scan_ref
from vimd_kernels.registry import kernel_available

KERNEL = "selective_scan"
F32 = torch.float32

# Shapes x B/C layouts x options, each option on and off somewhere; big L with small batch*dim
# (the reference backend is a Python loop over L).
CASES = [
    ScanCase(batch=1, dim=2, L=1, N=1, b_kind="const", c_kind="const", D=False, z=False,
             delta_bias=False, softplus=False),
    ScanCase(batch=2, dim=3, L=1, N=16, initial_state=True, reverse=True),
    ScanCase(batch=2, dim=4, L=7, N=1, b_kind="g1", c_kind="g1", D=False),
    ScanCase(batch=2, dim=4, L=7, N=10, b_kind="g2", c_kind="g2", initial_state=True, reverse=True),
    ScanCase(batch=1, dim=8, L=7, N=16, b_kind="g4", c_kind="g4", z=False, softplus=False),
    ScanCase(batch=2, dim=4, L=7, N=4, b_kind="var", c_kind="const", delta_bias=False),
    ScanCase(batch=2, dim=4, L=7, N=4, b_kind="const", c_kind="var", reverse=True, initial_state=True),
    ScanCase(batch=2, dim=4, L=7, N=3, b_kind="var", c_kind="g2", D=False, z=False),
    ScanCase(batch=2, dim=4, L=197, N=16, initial_state=True),
    ScanCase(batch=1, dim=8, L=197, N=10, b_kind="g4", c_kind="g4", z=False, reverse=True,
             initial_state=True),
    ScanCase(batch=2, dim=2, L=197, N=1, b_kind="const", c_kind="const", delta_bias=False,
             softplus=False, reverse=True),
    ScanCase(batch=1, dim=2, L=730, N=16, initial_state=True, reverse=True),
    ScanCase(batch=1, dim=4, L=730, N=16, b_kind="g2", c_kind="var", D=False),
]

DTYPE_CASES = [
    ScanCase(batch=2, dim=4, L=7, N=16, dtype=torch.float16, initial_state=True),
    ScanCase(batch=2, dim=4, L=7, N=16, dtype=torch.bfloat16, reverse=True),
    ScanCase(batch=2, dim=4, L=197, N=16, dtype=torch.float16, b_kind="g2", c_kind="g2"),
    ScanCase(batch=2, dim=4, L=197, N=16, dtype=torch.bfloat16, initial_state=True, reverse=True),
    ScanCase(batch=2, dim=4, L=7, N=8, dtype=torch.float16, bc_dtype=torch.float32),
    ScanCase(batch=2, dim=4, L=7, N=8, dtype=torch.bfloat16, bc_dtype=torch.float32, b_kind="const"),
]


def _tiny(case: ScanCase) -> bool:
    return case.L <= 7 and case.batch * case.dim <= 8


def _run(backend, x: dict, case: ScanCase, fn=selective_scan_fn):
    return fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
              case.softplus, True, initial_state=x["initial_state"], reverse=case.reverse,
              backend=backend)


def _grads(x: dict) -> dict:
    return {k: v.grad for k, v in x.items() if v is not None}


def check_against_oracles(backend: str, case: ScanCase, seed: int = 0) -> None:
    inputs = scan_inputs(case, seed)
    x = leaves(inputs)
    out, last = _run(backend, x, case)
    assert out.shape == x["u"].shape and out.dtype == case.dtype
    want_last = torch.float64 if case.dtype == torch.float64 else F32
    assert last.shape == (case.batch, case.dim, case.N) and last.dtype == want_last

    with torch.no_grad():
        r_out, r_last = _run(None, inputs, case, fn=selective_scan_ref)
    assert_close(out, r_out, "scan", case.dtype, "out vs reference")
    assert_close(last, r_last, "scan", case.dtype, "last_state vs reference")

    o = leaves(inputs, torch.float64)
    o_out, o_last = scan64(*(o[k] for k in SCAN_ARGS), delta_softplus=case.softplus,
                           reverse=case.reverse)
    assert_close(out, o_out, "scan", case.dtype, "out vs float64 oracle")
    assert_close(last, o_last, "scan", case.dtype, "last_state vs float64 oracle")

    gen = torch.Generator().manual_seed(seed + 1)
    dout = torch.randn(out.shape, generator=gen).to(case.dtype)
    dlast = torch.randn(last.shape, generator=gen, dtype=last.dtype)
    torch.autograd.backward([out, last], [dout, dlast])
    torch.autograd.backward([o_out, o_last], [dout.double(), dlast.double()])
    for name, g in _grads(x).items():
        assert g is not None, f"no gradient reached {name}"
        assert g.dtype == x[name].dtype and g.shape == x[name].shape, name
        assert_close(g, o[name].grad, "scan", case.dtype, f"d{name} vs float64 oracle",
                     scale=scan_grad_scale(case, name, x[name]))


@pytest.mark.parametrize("backend,case", backend_params(KERNEL, CASES, _tiny))
def test_forward_and_gradients(backend, case):
    check_against_oracles(backend, case)


@pytest.mark.parametrize("backend,case", backend_params(KERNEL, DTYPE_CASES, _tiny))
def test_half_precision(backend, case):
    check_against_oracles(backend, case)


@pytest.mark.slow
@pytest.mark.parametrize("backend,case", backend_params(KERNEL, [
    ScanCase(batch=1, dim=4, L=2304, N=16, initial_state=True),
    ScanCase(batch=1, dim=8, L=2304, N=16, b_kind="g4", c_kind="g4", reverse=True),
    ScanCase(batch=1, dim=4, L=2304, N=16, dtype=torch.bfloat16),
], _tiny))
def test_long_sequences(backend, case):
    check_against_oracles(backend, case)


def _flip_inputs(inputs: dict) -> dict:
    out = dict(inputs)
    for k in ("u", "delta", "z", "B", "C"):
        v = inputs[k]
        if v is not None and v.dim() >= 3:
            out[k] = v.flip(-1)
    return out


REVERSE_CASES = [
    ScanCase(batch=2, dim=4, L=7, N=4, initial_state=True),
    ScanCase(batch=1, dim=4, L=7, N=3, b_kind="g2", c_kind="const", D=False),
    ScanCase(batch=2, dim=4, L=197, N=16, b_kind="g4", c_kind="var", initial_state=True),
]


@pytest.mark.parametrize("backend,case", backend_params(KERNEL, REVERSE_CASES, _tiny))
def test_reverse_is_flip_of_forward(backend, case):
    """reverse=True == flip(f(flip(inputs))), last_state and every gradient included."""
    inputs = scan_inputs(case)
    fwd_case = dataclasses.replace(case, reverse=False)
    rev_case = dataclasses.replace(case, reverse=True)
    x = leaves(inputs)
    out, last = _run(backend, x, rev_case)
    y = leaves(_flip_inputs(inputs))
    out_f, last_f = _run(backend, y, fwd_case)
    assert_close(out, out_f.flip(-1), "scan", case.dtype, "out")
    assert_close(last, last_f, "scan", case.dtype, "last_state")
    gen = torch.Generator().manual_seed(3)
    dout = torch.randn(out.shape, generator=gen).to(case.dtype)
    dlast = torch.randn(last.shape, generator=gen)
    torch.autograd.backward([out, last], [dout, dlast])
    torch.autograd.backward([out_f, last_f], [dout.flip(-1), dlast])
    for name, g in _grads(x).items():
        g_f = y[name].grad
        g_f = g_f.flip(-1) if name in ("u", "delta", "z") or (name in "BC" and g_f.dim() >= 3) else g_f
        assert_close(g, g_f, "scan", case.dtype, f"d{name}", scale=scan_grad_scale(case, name, x[name]))


def _split(inputs: dict, lo: int, hi: int) -> dict:
    out = dict(inputs)
    for k in ("u", "delta", "z", "B", "C"):
        v = inputs[k]
        if v is not None and v.dim() >= 3:
            out[k] = v[..., lo:hi]
    return out


CHAIN_CASES = [
    (ScanCase(batch=2, dim=4, L=7, N=4, initial_state=True), 3),
    (ScanCase(batch=2, dim=4, L=7, N=4, b_kind="g2", c_kind="const", reverse=True), 1),
    (ScanCase(batch=1, dim=4, L=197, N=16, initial_state=True), 100),
]


@pytest.mark.parametrize("backend,split_case", backend_params(KERNEL, CHAIN_CASES, lambda c: _tiny(c[0])))
def test_chaining_through_last_state(backend, split_case):
    """[0, L) == [0, k) then [k, L) with last_state fed back as initial_state (gradients too).
    For reverse=True the walk runs from the end, so the tail goes first."""
    case, k = split_case
    inputs = scan_inputs(case)
    x = leaves(inputs)
    out, last = _run(backend, x, case)

    y = leaves(inputs)
    first, second = (0, k), (k, case.L)
    if case.reverse:
        first, second = second, first
    one = _split(y, *first)
    out1, last1 = _run(backend, one, case)
    two = dict(_split(y, *second), initial_state=last1)
    out2, last2 = _run(backend, two, case)
    out_c = torch.cat([out2, out1] if case.reverse else [out1, out2], dim=-1)
    assert_close(out_c, out, "scan", case.dtype, "chained out")
    assert_close(last2, last, "scan", case.dtype, "chained last_state")

    gen = torch.Generator().manual_seed(4)
    dout = torch.randn(out.shape, generator=gen).to(case.dtype)
    dlast = torch.randn(last.shape, generator=gen)
    torch.autograd.backward([out, last], [dout, dlast])
    torch.autograd.backward([out_c, last2], [dout, dlast])
    for name, g in _grads(x).items():
        assert_close(y[name].grad, g, "scan", case.dtype, f"chained d{name}",
                     scale=scan_grad_scale(case, name, x[name]))


def _non_contiguous(t):
    """Same values, non-contiguous layout: a strided slice of a bigger buffer, transposed storage."""
    if t is None:
        return None
    if t.dim() == 1:
        buf = torch.empty(t.shape[0], 2, dtype=t.dtype)
        buf[:, 1] = t
        v = buf[:, 1]
    else:
        v = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not v.is_contiguous() and torch.equal(v, t)
    return v


@pytest.mark.parametrize("backend,case", backend_params(KERNEL, [
    ScanCase(batch=2, dim=4, L=7, N=4, initial_state=True),
    ScanCase(batch=2, dim=4, L=7, N=4, b_kind="g2", c_kind="const", reverse=True),
], _tiny))
def test_non_contiguous_inputs(backend, case):
    inputs = scan_inputs(case)
    x = leaves(inputs)
    out, last = _run(backend, x, case)
    y = {k: None if v is None else _non_contiguous(v.detach()).requires_grad_(True)
         for k, v in inputs.items()}
    out_n, last_n = _run(backend, y, case)
    assert torch.equal(out, out_n) and torch.equal(last, last_n)
    dout = torch.randn(out.shape).to(case.dtype)
    (out * dout).sum().backward()
    (out_n * dout).sum().backward()
    for name, g in _grads(x).items():
        assert torch.equal(g, y[name].grad), f"d{name} differs for non-contiguous inputs"


@pytest.mark.parametrize("backend", backend_params(KERNEL))
def test_gradient_of_output_only(backend):
    """last_state unused: its incoming gradient is absent/zero and must not disturb the rest."""
    case = ScanCase(batch=2, dim=4, L=6, N=4, initial_state=True)
    inputs = scan_inputs(case)
    x = leaves(inputs)
    out = selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                            x["delta_bias"], True, initial_state=x["initial_state"], backend=backend)
    o = leaves(inputs, torch.float64)
    o_out, _ = scan64(*(o[k] for k in SCAN_ARGS), delta_softplus=True)
    dout = torch.randn(out.shape)
    (out * dout).sum().backward()
    (o_out * dout.double()).sum().backward()
    for name, g in _grads(x).items():
        assert_close(g, o[name].grad, "scan", F32, f"d{name}")


@pytest.mark.parametrize("backend", backend_params(KERNEL))
def test_deterministic_gradients_are_bitwise_reproducible(backend):
    case = ScanCase(batch=2, dim=8, L=7, N=4, b_kind="g2", c_kind="const", initial_state=True)
    inputs = scan_inputs(case)
    dout = torch.randn(case.batch, case.dim, case.L)
    runs = []
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            x = leaves(inputs)
            out, last = _run(backend, x, case)
            torch.autograd.backward([out, last], [dout, torch.ones_like(last)])
            runs.append(_grads(x))
    finally:
        torch.use_deterministic_algorithms(prev)
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), f"d{name} not reproducible"


GRADCHECK_CASES = [
    ScanCase(batch=1, dim=2, L=5, N=3, initial_state=True, dtype=torch.float64),
    ScanCase(batch=2, dim=4, L=4, N=2, b_kind="g2", c_kind="const", reverse=True,
             initial_state=True, dtype=torch.float64),
    ScanCase(batch=1, dim=2, L=3, N=2, b_kind="const", c_kind="var", D=False, z=False,
             delta_bias=False, softplus=False, dtype=torch.float64),
]


@pytest.mark.parametrize("backend,case", [p for p in backend_params(KERNEL, GRADCHECK_CASES)
                                          if p.values[0] in ("ref", "cpu")])
def test_gradcheck_float64(backend, case):
    inputs = scan_inputs(case)
    names = [k for k in SCAN_ARGS if inputs[k] is not None]

    def f(*ts):
        kw = dict(zip(names, ts))
        x = {k: kw.get(k) for k in SCAN_ARGS}
        return _run(backend, x, case)

    ts = tuple(inputs[k].detach().clone().requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(f, ts, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_backend_modules_share_one_signature():
    """Every selective_scan backend module exposes forward/backward with the reference's parameters."""
    import inspect

    from vimd_kernels.registry import BACKENDS, impl
    ref = impl(KERNEL, "ref").module
    for name in BACKENDS:
        if not kernel_available(KERNEL, name):
            continue
        mod = impl(KERNEL, name).module
        for fn in ("forward", "backward"):
            assert list(inspect.signature(getattr(mod, fn)).parameters) == \
                list(inspect.signature(getattr(ref, fn)).parameters), f"{name}.{fn}"


@pytest.mark.parametrize("case", [ScanCase(2, 4, 7, 4, initial_state=True, reverse=True),
                                  ScanCase(1, 8, 5, 3, "g4", "const", D=False, z=False)], ids=str)
def test_reference_follows_its_inputs_device(case):
    """The reference's hand backward allocates nothing on a fixed device: on `meta` inputs every
    output is `meta` (a tensor made without a device would land on the CPU and fail to mix).
    Found on a GPU, where the reference backward allocated its states on the CPU."""
    from vimd_kernels.selective_scan import reference as scan_ref
    x = {k: None if v is None else v.to("meta") for k, v in scan_inputs(case).items()}
    args = [x[k] for k in SCAN_ARGS]
    out, last = scan_ref.forward(*args, case.softplus, case.reverse)
    dlast = torch.empty_like(last) if case.initial_state else None
    grads = scan_ref.backward(*args, torch.empty_like(out), dlast, case.softplus, case.reverse)
    for t in (out, last, *grads):
        assert t is None or t.device.type == "meta"
