"""The inference steps, selective_state_update and causal_conv1d_update, on every backend: against
their references on fresh random inputs, and against the full selective scan / causal conv1d run
token by token (the state after T single steps is the full scan's last state, the outputs are the
full outputs step by step). The "cuda" backend runs these checks under the host emulator in
tests/kernels/test_cuda.py (``check_*`` below).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F

import vimd_kernels as vk
from tests.kernels.helpers import ScanCase, backend_params, scan_inputs
from tests.tolerances import assert_close
from vimd_kernels.causal_conv1d.reference import causal_conv1d_ref
from vimd_kernels.conv_update import reference as conv_update_ref
from vimd_kernels.registry import impl
from vimd_kernels.selective_scan.reference import selective_scan_ref
from vimd_kernels.state_update import reference as state_update_ref

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64


# ----------------------------------------------------------------------------- selective state update

@dataclass(frozen=True)
class StepCase:
    """A scan configuration (its L is the number of tokens stepped) and the state's dtype."""
    scan: ScanCase
    state_dtype: torch.dtype = F32

    def __str__(self) -> str:
        return f"{self.scan}-state_{str(self.state_dtype).replace('torch.', '')}"


STEP_CASES = [
    StepCase(ScanCase(2, 8, 9, 4, initial_state=True)),
    StepCase(ScanCase(2, 8, 9, 4, "g2", "g4", initial_state=True)),
    StepCase(ScanCase(1, 6, 7, 16, "var", "g3", D=False, z=False, initial_state=True)),
    StepCase(ScanCase(2, 4, 8, 3, delta_bias=False, softplus=False, initial_state=True)),
    StepCase(ScanCase(2, 4, 6, 1, "g2", "var", initial_state=True)),
    StepCase(ScanCase(3, 5, 6, 40, initial_state=True)),  # N past a warp's lanes
    StepCase(ScanCase(2, 8, 8, 4, "g2", "var", dtype=F16, initial_state=True)),
    StepCase(ScanCase(2, 8, 8, 4, "var", "g2", dtype=BF16, initial_state=True)),
    StepCase(ScanCase(2, 8, 8, 4, dtype=BF16, initial_state=True, bc_dtype=F32)),
    StepCase(ScanCase(2, 8, 8, 4, "g4", "g4", initial_state=True), F16),
    StepCase(ScanCase(2, 8, 8, 4, dtype=F16, initial_state=True), BF16),
    StepCase(ScanCase(2, 8, 8, 4, dtype=BF16, initial_state=True), BF16),
    StepCase(ScanCase(2, 4, 5, 3, "g2", "var", dtype=F64, initial_state=True), F64),
]


def _token(X, t):
    return None if X is None else X[..., t].contiguous()


def step_args(case: StepCase, t: int, seed: int = 0) -> tuple:
    """(x, dt, A, B, C, D, z, dt_bias) of token t of the case's scan inputs, contiguous (as the
    public op hands them to the backends)."""
    s = scan_inputs(case.scan, seed)
    return (_token(s["u"], t), _token(s["delta"], t), s["A"], _token(s["B"], t), _token(s["C"], t),
            s["D"], _token(s["z"], t), s["delta_bias"])


def _state_tol(case: StepCase) -> torch.dtype:
    """The tolerance row of the states' comparison: the coarser of the inputs' and the state's."""
    order = (F64, F32, F16, BF16)
    return max(case.scan.dtype, case.state_dtype, key=order.index)


def check_state_update(step, case: StepCase) -> None:
    """``step`` (a backend's forward) against the reference's, on one token of fresh inputs."""
    s = scan_inputs(case.scan, seed=1)
    args = step_args(case, 0, seed=1)
    state = s["initial_state"].to(case.state_dtype)
    got_state, want_state = state.clone(), state.clone()
    out = step(got_state, *args, case.scan.softplus)
    want = state_update_ref.forward(want_state, *args, case.scan.softplus)
    assert out.dtype == case.scan.dtype and out.shape == args[0].shape
    assert got_state.dtype == case.state_dtype
    assert_close(out, want, "scan", case.scan.dtype, "out")
    assert_close(got_state, want_state, "scan", _state_tol(case), "state")


def check_state_update_token_by_token(step, case: StepCase) -> None:
    """T single steps from the initial state: the full scan's outputs, one per step, and its last
    state."""
    s = scan_inputs(case.scan)
    full, last = selective_scan_ref(s["u"], s["delta"], s["A"], s["B"], s["C"], s["D"], s["z"],
                                    s["delta_bias"], case.scan.softplus, True,
                                    initial_state=s["initial_state"])
    state = s["initial_state"].to(case.state_dtype)
    outs = [step(state, *step_args(case, t), case.scan.softplus) for t in range(case.scan.L)]
    assert_close(torch.stack(outs, -1), full, "scan", _state_tol(case), "outputs")
    assert_close(state, last, "scan", _state_tol(case), "last state")


def _impl_step(kernel: str, backend: str):
    return impl(kernel, backend).forward


@pytest.mark.parametrize("backend,case", backend_params("state_update", STEP_CASES))
def test_state_update_matches_reference(backend, case):
    check_state_update(_impl_step("state_update", backend), case)


@pytest.mark.parametrize("backend,case", backend_params("state_update", STEP_CASES))
def test_state_update_token_by_token_is_the_full_scan(backend, case):
    check_state_update_token_by_token(_impl_step("state_update", backend), case)


@pytest.mark.parametrize("backend", ("ref", "cpu"))
def test_state_update_public_op_steps_a_strided_state_in_place(backend):
    """Through the public op: a state that is a strided view is updated in place, the result the
    one a contiguous state gets."""
    case = StepCase(ScanCase(2, 6, 1, 4, "g3", "var", initial_state=True))
    args = step_args(case, 0)
    base = torch.randn(2, 4, 6)  # state = base.transpose(1, 2): (2, 6, 4), not contiguous
    state = base.transpose(1, 2)
    want_state = state.contiguous()
    want = vk.selective_state_update(want_state, *args, dt_softplus=True, backend="ref")
    out = vk.selective_state_update(state, *args, dt_softplus=True, backend=backend)
    assert_close(out, want, "scan", F32, "out")
    assert_close(base.transpose(1, 2), want_state, "scan", F32, "state")


# ----------------------------------------------------------------------------- causal conv1d update

@dataclass(frozen=True)
class ConvStepCase:
    batch: int = 2
    dim: int = 5
    T: int = 7  # tokens
    width: int = 4
    extra: int = 0  # state_len = width - 1 + extra
    bias: bool = True
    silu: bool = True
    circular: bool = False
    dtype: torch.dtype = F32
    w_dtype: torch.dtype | None = None  # weight / bias dtype when it differs from x's

    @property
    def state_len(self) -> int:
        return self.width - 1 + self.extra

    def __str__(self) -> str:
        opts = ("b" if self.bias else "-") + ("s" if self.silu else "-") + ("c" if self.circular else "-")
        w = f"-w_{str(self.w_dtype).replace('torch.', '')}" if self.w_dtype else ""
        return (f"b{self.batch}d{self.dim}T{self.T}W{self.width}S{self.state_len}-{opts}-"
                f"{str(self.dtype).replace('torch.', '')}{w}")


CONV_CASES = [
    ConvStepCase(width=2), ConvStepCase(width=3), ConvStepCase(width=4),
    ConvStepCase(width=4, extra=3, bias=False, silu=False),
    ConvStepCase(width=3, circular=True), ConvStepCase(width=4, extra=2, circular=True),
    ConvStepCase(width=2, extra=5, circular=True, silu=False),
    ConvStepCase(width=4, dtype=F16), ConvStepCase(width=3, dtype=BF16, circular=True, extra=1),
    ConvStepCase(width=4, dtype=BF16, w_dtype=F32),
    ConvStepCase(width=3, dtype=F64, circular=True),
    ConvStepCase(1, 3, 5, width=8, extra=1),
]


def conv_inputs(case: ConvStepCase, seed: int = 0) -> dict:
    """x (batch, dim, T), the width - 1 inputs before it, weight, bias, and the circular buffer's
    first slot per row (a different one per row, some past state_len)."""
    gen = torch.Generator().manual_seed(seed)
    b, d, W, dt = case.batch, case.dim, case.width, case.dtype
    wdt = case.w_dtype or dt
    return dict(
        x=torch.randn(b, d, case.T, generator=gen).to(dt),
        prev=torch.randn(b, d, W - 1, generator=gen).to(dt),
        weight=(torch.randn(d, W, generator=gen) / W ** 0.5).to(wdt),
        bias=torch.randn(d, generator=gen).to(wdt) if case.bias else None,
        start=torch.randint(0, 3 * case.state_len, (b,), generator=gen, dtype=torch.int32),
    )


def initial_conv_state(case: ConvStepCase, inp: dict) -> tuple:
    """(conv_state holding the inputs before x, cache_seqlens or None). The slots no input fills are
    random (they must not matter)."""
    b, d, W, S = case.batch, case.dim, case.width, case.state_len
    state = torch.randn(b, d, S).to(case.dtype)
    if not case.circular:
        state[..., S - (W - 1):] = inp["prev"]
        return state, None
    for r in range(b):
        slots = torch.remainder(inp["start"][r].long() - (W - 1) + torch.arange(W - 1), S)
        state[r][:, slots] = inp["prev"][r]
    return state, inp["start"].clone()


def _full_conv(case: ConvStepCase, inp: dict) -> torch.Tensor:
    x_ext = torch.cat([inp["prev"], inp["x"]], -1)
    return causal_conv1d_ref(x_ext, inp["weight"], inp["bias"], "silu" if case.silu else None)[..., case.width - 1:]


def _check_final_state(case: ConvStepCase, inp: dict, state: torch.Tensor, seqlens) -> None:
    """The last inputs sit where the next step reads them (copies: exact)."""
    S = case.state_len
    hist = torch.cat([inp["prev"], inp["x"]], -1)
    n = min(S, hist.shape[-1])
    if not case.circular:
        assert torch.equal(state[..., S - n:], hist[..., -n:])
        return
    for r in range(case.batch):
        slots = torch.remainder(seqlens[r].long() - n + torch.arange(n), S)
        assert torch.equal(state[r][:, slots], hist[r, :, -n:])


def check_conv_update(step, case: ConvStepCase) -> None:
    """``step`` against the reference's, on two tokens of fresh inputs."""
    inp = conv_inputs(case, seed=1)
    state, seqlens = initial_conv_state(case, inp)
    x = inp["x"][..., :2].contiguous()
    got_state, want_state = state.clone(), state.clone()
    out = step(x, got_state, inp["weight"], inp["bias"], case.silu, seqlens)
    want = conv_update_ref.forward(x, want_state, inp["weight"], inp["bias"], case.silu, seqlens)
    assert out.dtype == case.dtype and out.shape == x.shape
    assert_close(out, want, "conv", case.dtype, "out")
    assert torch.equal(got_state, want_state)


def check_conv_update_token_by_token(step, case: ConvStepCase, chunk: int = 1) -> None:
    """The tokens ``chunk`` at a time: the full conv's outputs, and the last inputs kept."""
    inp = conv_inputs(case)
    state, seqlens = initial_conv_state(case, inp)
    outs = []
    for t in range(0, case.T, chunk):
        x = inp["x"][..., t:t + chunk].contiguous()
        outs.append(step(x, state, inp["weight"], inp["bias"], case.silu, seqlens))
        if seqlens is not None:
            seqlens += x.shape[-1]
    assert_close(torch.cat(outs, -1), _full_conv(case, inp), "conv", case.dtype, "outputs")
    _check_final_state(case, inp, state, seqlens)


@pytest.mark.parametrize("backend,case", backend_params("conv_update", CONV_CASES))
def test_conv_update_matches_reference(backend, case):
    check_conv_update(_impl_step("conv_update", backend), case)


@pytest.mark.parametrize("chunk", (1, 3))
@pytest.mark.parametrize("backend,case", backend_params("conv_update", CONV_CASES))
def test_conv_update_token_by_token_is_the_full_conv(backend, case, chunk):
    check_conv_update_token_by_token(_impl_step("conv_update", backend), case, chunk)


@pytest.mark.parametrize("backend", ("ref", "cpu"))
def test_conv_update_public_op_takes_one_token_and_a_strided_state(backend):
    """(batch, dim) in, (batch, dim) out; "swish" is SiLU; a strided conv_state (nn.Conv1d's
    weight (dim, 1, width)) is updated in place."""
    case = ConvStepCase(width=4, extra=1)
    inp = conv_inputs(case)
    state, _ = initial_conv_state(case, inp)
    base = state.transpose(1, 2).contiguous()
    strided = base.transpose(1, 2)
    want_state = state.clone()
    want = vk.causal_conv1d_update(inp["x"][..., 0], want_state, inp["weight"], inp["bias"], "silu",
                                   backend="ref")
    out = vk.causal_conv1d_update(inp["x"][..., 0], strided, inp["weight"][:, None], inp["bias"],
                                  "swish", backend=backend)
    assert out.shape == (case.batch, case.dim)
    assert_close(out, want, "conv", F32, "out")
    assert torch.equal(base.transpose(1, 2), want_state)


# ----------------------------------------------------------------------------- bad input

def _raises(exc, name, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert re.search(rf"\b{re.escape(name)}\b", str(info.value)), f"message does not name {name!r}: {info.value}"


def _ssu_inputs():
    b, d, N = 2, 6, 4
    return dict(state=torch.randn(b, d, N), x=torch.randn(b, d), dt=torch.rand(b, d), A=-torch.rand(d, N),
                B=torch.randn(b, N), C=torch.randn(b, 3, N), D=torch.randn(d), z=torch.randn(b, d),
                dt_bias=torch.rand(d))


@pytest.mark.parametrize("name,bad,exc", [
    ("state", torch.randn(2, 5, 4), ValueError),
    ("state", torch.randn(2, 6), ValueError),
    ("state", torch.randn(2, 6, 4).to(torch.int32), TypeError),
    ("state", torch.randn(2, 6, 4, dtype=F64), TypeError),
    ("x", torch.randn(2, 6, 1), ValueError),
    ("dt", torch.rand(2, 6, dtype=F16), TypeError),
    ("dt", torch.rand(2, 5), ValueError),
    ("A", -torch.rand(6, 3), ValueError),
    ("A", -torch.rand(6, 4, dtype=F16), TypeError),
    ("B", torch.randn(2, 4, 4), ValueError),  # 4 groups do not divide dim=6
    ("B", torch.randn(2, 5), ValueError),
    ("C", torch.randn(2, 3, 4, 1), ValueError),
    ("D", torch.randn(5), ValueError),
    ("z", torch.randn(2, 7), ValueError),
    ("dt_bias", torch.rand(6, dtype=F16), TypeError),
    ("x", None, TypeError),
])
def test_state_update_rejects_bad_arguments(name, bad, exc):
    kw = dict(_ssu_inputs(), **{name: bad})
    _raises(exc, name, vk.selective_state_update, **kw, backend="ref")


def _conv_inputs():
    return dict(x=torch.randn(2, 6, 1), conv_state=torch.randn(2, 6, 3), weight=torch.randn(6, 4),
                bias=torch.randn(6), activation="silu", cache_seqlens=None)


@pytest.mark.parametrize("name,bad,exc", [
    ("x", torch.randn(6), ValueError),
    ("conv_state", torch.randn(2, 6, 2), ValueError),  # shorter than width - 1
    ("conv_state", torch.randn(2, 5, 3), ValueError),
    ("conv_state", torch.randn(2, 6, 3, dtype=F16), TypeError),
    ("weight", torch.randn(6, 9), ValueError),
    ("weight", torch.randn(5, 4), ValueError),
    ("weight", torch.randn(6, 2, 4), ValueError),
    ("bias", torch.randn(5), ValueError),
    ("activation", "relu", ValueError),
    ("cache_seqlens", torch.zeros(3, dtype=torch.int32), ValueError),
    ("cache_seqlens", torch.zeros(2), TypeError),
])
def test_conv_update_rejects_bad_arguments(name, bad, exc):
    kw = dict(_conv_inputs(), **{name: bad})
    _raises(exc, name, vk.causal_conv1d_update, **kw, backend="ref")


def test_update_ops_name_a_backend_that_does_not_run_here():
    ssu = _ssu_inputs()
    _raises(ValueError, "backend", vk.selective_state_update, **ssu, backend="cuda")
    _raises(ValueError, "backend", vk.causal_conv1d_update, **_conv_inputs(), backend="nope")


def test_mamba_step_runs_on_the_dispatching_ops(monkeypatch):
    """The Mamba layer's decoding step goes through the public update ops, on the layer's backend."""
    from vimd_kernels import ops
    from vimd_models.layers import mamba as mamba_mod
    seen = []
    for name in ("selective_state_update", "causal_conv1d_update"):
        real = getattr(ops, name)
        monkeypatch.setattr(mamba_mod, name, lambda *a, _real=real, _n=name, **k: (seen.append((_n, k["backend"])), _real(*a, **k))[1])
    layer = mamba_mod.Mamba(8, d_state=4, layer_idx=0, backend="ref")
    conv, ssm = layer.allocate_inference_cache(2, 4)
    with torch.no_grad():
        layer.step(torch.randn(2, 1, 8), conv, ssm)
    assert sorted(seen) == [("causal_conv1d_update", "ref"), ("selective_state_update", "ref")]
