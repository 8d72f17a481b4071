"""The backend contract (vimd_kernels/backend.py): the check of a module at load, the dispatch
table, and the public ops' errors for inputs a backend's declared capabilities rule out."""
from __future__ import annotations

import dataclasses
import re
import types

import pytest
import torch

from tests.kernels.helpers import ScanCase, scan_inputs
from tests.kernels.test_mamba_inner import branch_weights
from vimd_kernels import bimamba_v2_inner_fn, causal_conv1d_fn, checks, mamba_inner_fn, registry, selective_scan_fn
from vimd_kernels.backend import SPECS, Capabilities, ContractError, load
from vimd_kernels.causal_conv1d import reference as conv_ref
from vimd_kernels.selective_scan import reference as scan_ref

F32 = (torch.float32,)


def _module(name="vimd_kernels.causal_conv1d.fake", **attrs):
    mod = types.ModuleType(name)
    base = dict(forward=conv_ref.forward, backward=conv_ref.backward, CAPS=Capabilities(dtypes=F32))
    for k, v in {**base, **attrs}.items():  # None: left out
        if v is not None:
            setattr(mod, k, v)
    return mod


def test_a_module_that_follows_the_contract_loads():
    entry = load("causal_conv1d", _module())
    assert entry.forward is conv_ref.forward and not entry.bidirectional
    assert entry.caps == Capabilities(dtypes=F32)


def _bi_forward(x, weight, bias, silu):
    return x


def _bi_backward(x, weight, bias, dout, silu):
    return x, weight, bias


@pytest.mark.parametrize("attrs,pattern", [
    (dict(backward=None), r"fake has no backward\(\)"),
    (dict(forward=42), r"fake\.forward must be a function"),
    (dict(forward=lambda x, w, bias, silu, reverse: x), r"forward must take \(x, weight, bias, silu, reverse\)"),
    (dict(bi_forward=_bi_forward), r"provides bi_forward without bi_backward"),
    (dict(bi_forward=_bi_forward, bi_backward=lambda x, w, b, d, s: x), r"bi_backward must take"),
    (dict(CAPS=None), r"CAPS must be a vimd_kernels\.backend\.Capabilities, got NoneType"),
    (dict(CAPS={"dtypes": F32}), r"CAPS must be a vimd_kernels\.backend\.Capabilities, got dict"),
    (dict(CAPS=Capabilities(dtypes=F32, max_state=16)), r"CAPS\.max_state does not apply to causal_conv1d"),
])
def test_a_module_that_breaks_the_contract_is_named_at_load(attrs, pattern):
    with pytest.raises(ContractError, match=pattern):
        load("causal_conv1d", _module(**attrs))


def test_optional_entry_points_come_together():
    entry = load("causal_conv1d", _module(bi_forward=_bi_forward, bi_backward=_bi_backward))
    assert entry.bidirectional and entry.bi_backward is _bi_backward


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(dtypes=torch.float32), r"dtypes must be a non-empty tuple"),
    (dict(dtypes=()), r"dtypes must be a non-empty tuple"),
    (dict(dtypes=(torch.int32,)), r"dtypes must be a non-empty tuple"),
    (dict(dtypes=F32, max_state=0), r"max_state must be None or an int >= 1"),
    (dict(dtypes=F32, pass_state=0), r"pass_state must be None or an int >= 1"),
    (dict(dtypes=F32, max_state=8, pass_state=16), r"pass_state \(16\) must be below max_state \(8\)"),
    (dict(dtypes=F32, max_width=1), r"max_width must be None or an int >= 2"),
    (dict(dtypes=F32, max_width=True), r"max_width must be None or an int >= 2"),
    (dict(dtypes=F32, reverse="yes"), r"reverse must be a bool"),
    (dict(dtypes=F32, row_views=1), r"row_views must be a bool"),
])
def test_capabilities_of_the_wrong_kind_are_refused(kwargs, pattern):
    with pytest.raises(ContractError, match=pattern):
        Capabilities(**kwargs)


def test_reference_modules_have_the_contract_signatures():
    """The contract's parameter lists are the references' (so every backend shares them)."""
    for kernel, mod in (("selective_scan", scan_ref), ("causal_conv1d", conv_ref)):
        entry = load(kernel, mod)
        assert set(SPECS[kernel].required) == {"forward", "backward"}
        assert entry.forward is mod.forward and entry.backward is mod.backward


@pytest.mark.parametrize("kernel", registry.KERNELS)
def test_every_available_backend_module_loads_once(kernel):
    for name in registry.BACKENDS:
        if not registry.kernel_available(kernel, name):
            continue
        entry = registry.impl(kernel, name)
        assert registry.impl(kernel, name) is entry  # one table entry, loaded once
        assert entry.module.__name__ == registry._module_name(kernel, name)
        assert isinstance(registry.capabilities(kernel, name), Capabilities)


def test_a_missing_backend_module_is_named():
    with pytest.raises(RuntimeError, match=r"backend 'nope' has no causal_conv1d kernel"):
        registry.impl("causal_conv1d", "nope")
    with pytest.raises(ValueError, match="kernel must be one of"):
        registry.impl("conv2d", "ref")


# ----------------------------------------------------------------------------- capability errors
# The public ops check the inputs against the chosen backend's declared capabilities. Here the
# "ref" modules stand in for a narrower backend: the same entry points with restricted CAPS.

@pytest.fixture
def narrow_ref(monkeypatch):
    """The ref backend with float32 rows only, N <= 2 states, widths up to 3, no reverse."""
    caps = Capabilities(dtypes=F32, max_state=2, max_width=3, reverse=False)
    for kernel, limit in (("selective_scan", dict(max_width=None)), ("causal_conv1d", dict(max_state=None))):
        entry = registry.impl(kernel, "ref")
        monkeypatch.setitem(registry._TABLE, (kernel, "ref"),
                            dataclasses.replace(entry, caps=dataclasses.replace(caps, **limit)))


def _raises(exc, name, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert re.search(rf"\b{re.escape(name)}\b", str(info.value)), f"message does not name {name!r}: {info.value}"
    assert "'ref'" in str(info.value)


def _scan(case: ScanCase, reverse=False):
    x = scan_inputs(case)
    return selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                             True, reverse=reverse, backend="ref")


def test_scan_outside_the_backend_capabilities(narrow_ref):
    _scan(ScanCase(batch=1, dim=2, L=3, N=2))
    _raises(TypeError, "u", _scan, ScanCase(batch=1, dim=2, L=3, N=2, dtype=torch.float64))
    _raises(ValueError, "A", _scan, ScanCase(batch=1, dim=2, L=3, N=3))
    _raises(ValueError, "reverse", _scan, ScanCase(batch=1, dim=2, L=3, N=2), reverse=True)


def test_conv_outside_the_backend_capabilities(narrow_ref):
    x, w = torch.randn(1, 2, 5), torch.randn(2, 3)
    causal_conv1d_fn(x, w, backend="ref")
    _raises(TypeError, "x", causal_conv1d_fn, x.double(), w.double(), backend="ref")
    _raises(ValueError, "weight", causal_conv1d_fn, x, torch.randn(2, 1, 4), backend="ref")
    _raises(ValueError, "reverse", causal_conv1d_fn, x, w, reverse=True, backend="ref")


def _mixer(xz, width=3, N=2, bidirectional=False):
    gen = torch.Generator().manual_seed(0)
    d_inner = xz.shape[1] // 2
    w = [{k: None if v is None else v.to(xz.dtype) for k, v in branch_weights(d_inner, N, 2, width, gen).items()}
         for _ in range(2)]
    out_w = torch.randn(3, d_inner, generator=gen).to(xz.dtype)
    f, b = w
    if bidirectional:
        return bimamba_v2_inner_fn(xz, f["conv1d_weight"], f["conv1d_bias"], f["x_proj_weight"],
                                f["delta_proj_weight"], f["A"], f["D"], f["delta_bias"], b["conv1d_weight"],
                                b["conv1d_bias"], b["x_proj_weight"], b["delta_proj_weight"], b["A"], b["D"],
                                b["delta_bias"], out_w, backend="ref")
    return mamba_inner_fn(xz, f["conv1d_weight"], f["conv1d_bias"], f["x_proj_weight"], f["delta_proj_weight"],
                          out_w, None, f["A"], None, None, f["D"], f["delta_bias"], backend="ref")


def test_mixers_outside_the_backend_capabilities(narrow_ref):
    xz = torch.randn(1, 8, 5)
    _mixer(xz)
    _raises(TypeError, "xz", _mixer, xz.double())
    _raises(ValueError, "A", _mixer, xz, N=3)
    _raises(ValueError, "conv1d_weight", _mixer, xz, width=4)
    _raises(ValueError, "reverse", _mixer, xz, bidirectional=True)


@pytest.mark.skipif(registry.extension() is None, reason="the cuda modules read the built extension's layout")
def test_cuda_capabilities_rule_out_float64_and_large_N():
    """The cuda modules declare float32/16/bf16 rows and N <= 256 (mamba_ssm's limit; above the
    kernels' register budget as passes over state slices): the public ops refuse the rest by name
    before anything is launched."""
    scan_caps = registry.capabilities("selective_scan", "cuda")
    conv_caps = registry.capabilities("causal_conv1d", "cuda")
    assert torch.float64 not in scan_caps.dtypes and torch.float64 not in conv_caps.dtypes
    assert scan_caps.max_state == 256 and scan_caps.pass_state == registry.extension().cuda_scan_max_state
    assert scan_caps.row_views and conv_caps.row_views
    u = torch.zeros(1, 2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"u: backend 'cuda' of selective_scan takes .*got float64"):
        checks.backend("selective_scan", "cuda", io=("u", u), state=("A", torch.zeros(2, 4)))
    N = scan_caps.max_state + 1
    with pytest.raises(ValueError, match=rf"A: backend 'cuda' of selective_scan supports N <= {N - 1} "):
        checks.backend("selective_scan", "cuda", io=("u", u.float()), state=("A", torch.zeros(2, N)))
    with pytest.raises(TypeError, match=r"x: backend 'cuda' of causal_conv1d takes .*got float64"):
        checks.backend("causal_conv1d", "cuda", io=("x", u), width=("weight", torch.zeros(2, 4)))
