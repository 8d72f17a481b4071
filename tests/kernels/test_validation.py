"""Bad input raises ValueError/TypeError naming the argument; unknown/unavailable backends explain."""
from __future__ import annotations

import re

import pytest
import torch

from tests.kernels.helpers import ScanCase, scan_inputs
from tests.kernels.test_mamba_inner import branch_weights
from vimd_kernels import (bimamba_v2_inner_fn, causal_conv1d_fn, mamba_inner_fn, selective_scan_fn)
from vimd_kernels.registry import BACKENDS, resolve

CASE = ScanCase(batch=2, dim=4, L=5, N=3, initial_state=True)


def _scan(**overrides):
    x = scan_inputs(CASE)
    x.update(overrides)
    return selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                             x["delta_bias"], True, initial_state=x["initial_state"], backend="ref")


def _raises(exc, name, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert re.search(rf"\b{re.escape(name)}\b", str(info.value)), \
        f"message does not name {name!r}: {info.value}"


META = torch.device("meta")
b, d, L, N = CASE.batch, CASE.dim, CASE.L, CASE.N

SCAN_BAD = [
    ("u", ValueError, dict(u=torch.randn(b, d))),                              # ndims
    ("u", TypeError, dict(u=torch.randint(0, 3, (b, d, L)))),                  # dtype
    ("u", TypeError, dict(u=[1.0, 2.0])),                                      # not a tensor
    ("delta", ValueError, dict(delta=torch.randn(b, d, L + 1))),
    ("delta", TypeError, dict(delta=torch.randn(b, d, L, dtype=torch.float16))),
    ("A", ValueError, dict(A=-torch.rand(d + 1, N))),
    ("A", TypeError, dict(A=-torch.rand(d, N, dtype=torch.float16))),
    ("B", ValueError, dict(B=torch.randn(b, N + 1, L))),
    ("B", ValueError, dict(B=torch.randn(b, 3, N, L))),                        # groups don't divide dim
    ("B", ValueError, dict(B=torch.randn(b, N, L, 1, 1))),
    ("C", ValueError, dict(C=torch.randn(d, N + 1))),
    ("C", ValueError, dict(C=torch.randn(b, 2, N, L - 1))),
    ("C", TypeError, dict(C=torch.randn(b, N, L, dtype=torch.float16))),
    ("D", ValueError, dict(D=torch.randn(d + 1))),
    ("D", TypeError, dict(D=torch.randn(d, dtype=torch.float64))),
    ("z", ValueError, dict(z=torch.randn(b, d, L - 1))),
    ("delta_bias", ValueError, dict(delta_bias=torch.randn(d, 1))),
    ("initial_state", ValueError, dict(initial_state=torch.randn(b, d, N + 1))),
    ("initial_state", TypeError, dict(initial_state=torch.randn(b, d, N, dtype=torch.float16))),
    ("B", ValueError, dict(B=torch.randn(b, N, L, device=META))),              # device
    ("initial_state", ValueError, dict(initial_state=torch.randn(b, d, N, device=META))),
]


@pytest.mark.parametrize("name,exc,overrides", SCAN_BAD,
                         ids=[f"{n}-{e.__name__}-{i}" for i, (n, e, _) in enumerate(SCAN_BAD)])
def test_selective_scan_rejects(name, exc, overrides):
    _raises(exc, name, _scan, **overrides)


def _conv(x=None, weight=None, bias=None, activation="silu"):
    x = torch.randn(2, 4, 9) if x is None else x
    weight = torch.randn(4, 4) if weight is None else weight
    return causal_conv1d_fn(x, weight, bias, activation, backend="ref")


CONV_BAD = [
    ("x", ValueError, dict(x=torch.randn(4, 9))),
    ("x", TypeError, dict(x=torch.randint(0, 2, (2, 4, 9)))),
    ("weight", ValueError, dict(weight=torch.randn(4, 1))),                    # width 1
    ("weight", ValueError, dict(weight=torch.randn(4, 9))),                    # width 9
    ("weight", ValueError, dict(weight=torch.randn(5, 4))),
    ("weight", ValueError, dict(weight=torch.randn(4, 2, 4))),
    ("weight", TypeError, dict(weight=torch.randn(4, 4, dtype=torch.float16))),
    ("bias", ValueError, dict(bias=torch.randn(3))),
    ("activation", ValueError, dict(activation="relu")),
    ("bias", ValueError, dict(bias=torch.randn(4, device=META))),
]


@pytest.mark.parametrize("name,exc,kw", CONV_BAD,
                         ids=[f"{n}-{e.__name__}-{i}" for i, (n, e, _) in enumerate(CONV_BAD)])
def test_causal_conv1d_rejects(name, exc, kw):
    _raises(exc, name, _conv, **kw)


def test_unknown_backend():
    x, w = torch.randn(1, 2, 3), torch.randn(2, 2)
    with pytest.raises(ValueError, match="backend"):
        causal_conv1d_fn(x, w, backend="tpu")
    with pytest.raises(ValueError, match="backend"):
        selective_scan_fn(*(scan_inputs(CASE)[k] for k in ("u", "delta", "A", "B", "C")), backend="fast")


def test_env_var_backend_is_checked(monkeypatch):
    monkeypatch.setenv("VIMD_BACKEND", "nope")
    with pytest.raises(ValueError, match="backend"):
        resolve(None, torch.device("cpu"))
    monkeypatch.setenv("VIMD_BACKEND", "ref")
    assert resolve(None, torch.device("cpu")) == "ref"


@pytest.mark.parametrize("name", [n for n, bk in BACKENDS.items() if not bk.available() and "cpu" in bk.devices])
def test_unavailable_backend_names_the_install_command(name):
    with pytest.raises(RuntimeError, match="install") as info:
        resolve(name, torch.device("cpu"))
    assert name in str(info.value)


def test_backend_for_wrong_device():
    with pytest.raises(ValueError, match="cuda"):
        resolve("cuda", torch.device("cpu"))


# ----------------------------------------------------------------------------- mixers

def _mixer_args(**overrides):
    gen = torch.Generator().manual_seed(0)
    d_inner, N, rank = 8, 4, 2
    w = branch_weights(d_inner, N, rank, 4, gen)
    args = dict(xz=torch.randn(2, 2 * d_inner, 5, generator=gen), **w,
                out_proj_weight=torch.randn(6, d_inner, generator=gen), out_proj_bias=None)
    args.update(overrides)
    return args


def _mamba(**overrides):
    a = _mixer_args(**overrides)
    return mamba_inner_fn(a["xz"], a["conv1d_weight"], a["conv1d_bias"], a["x_proj_weight"],
                          a["delta_proj_weight"], a["out_proj_weight"], a["out_proj_bias"], a["A"],
                          None, None, a["D"], a["delta_bias"], backend="ref")


MIXER_BAD = [
    ("xz", ValueError, dict(xz=torch.randn(2, 15, 5))),
    ("xz", ValueError, dict(xz=torch.randn(16, 5))),
    ("conv1d_weight", ValueError, dict(conv1d_weight=torch.randn(7, 1, 4))),
    ("conv1d_weight", ValueError, dict(conv1d_weight=torch.randn(8, 2, 4))),
    ("conv1d_bias", ValueError, dict(conv1d_bias=torch.randn(7))),
    ("x_proj_weight", ValueError, dict(x_proj_weight=torch.randn(9, 8))),
    ("delta_proj_weight", ValueError, dict(delta_proj_weight=torch.randn(7, 2))),
    ("A", ValueError, dict(A=-torch.rand(7, 4))),
    ("D", ValueError, dict(D=torch.randn(9))),
    ("delta_bias", ValueError, dict(delta_bias=torch.randn(2, 8))),
    ("out_proj_weight", ValueError, dict(out_proj_weight=torch.randn(6, 7))),
    ("out_proj_bias", ValueError, dict(out_proj_bias=torch.randn(5))),
    ("x_proj_weight", ValueError, dict(x_proj_weight=torch.randn(10, 8, device=META))),
]


@pytest.mark.parametrize("name,exc,kw", MIXER_BAD,
                         ids=[f"{n}-{e.__name__}-{i}" for i, (n, e, _) in enumerate(MIXER_BAD)])
def test_mamba_inner_rejects(name, exc, kw):
    _raises(exc, name, _mamba, **kw)


@pytest.mark.parametrize("name,kw", [("A_b", dict(A_b=-torch.rand(7, 4))),
                                     ("x_proj_weight_b", dict(x_proj_weight_b=torch.randn(9, 8))),
                                     ("D_b", dict(D_b=torch.randn(3))),
                                     ("conv1d_weight_b", dict(conv1d_weight_b=torch.randn(8, 1, 9)))])
def test_bimamba_inner_rejects_mismatched_backward_branch(name, kw):
    a = _mixer_args()
    bw = {k + "_b": v.clone() for k, v in branch_weights(8, 4, 2, 4, torch.Generator().manual_seed(1)).items()}
    bw.update(kw)
    with pytest.raises(ValueError) as info:
        bimamba_v2_inner_fn(a["xz"], a["conv1d_weight"], a["conv1d_bias"], a["x_proj_weight"],
                         a["delta_proj_weight"], a["A"], a["D"], a["delta_bias"],
                         bw["conv1d_weight_b"], bw["conv1d_bias_b"], bw["x_proj_weight_b"],
                         bw["delta_proj_weight_b"], bw["A_b"], bw["D_b"], bw["delta_bias_b"],
                         a["out_proj_weight"], backend="ref")
    assert name in str(info.value)


def test_explicit_backend_that_is_missing_says_how_to_install(monkeypatch):
    """Independent of what is built here: pretend the C++ extension is missing."""
    import dataclasses

    from vimd_kernels import registry
    missing = dataclasses.replace(registry.BACKENDS["cpu"], available=lambda: False)
    monkeypatch.setitem(registry.BACKENDS, "cpu", missing)
    x, w = torch.randn(1, 2, 5), torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="pip install") as info:
        causal_conv1d_fn(x, w, backend="cpu")
    assert "'cpu'" in str(info.value)


def test_renamed_bimamba_names_warn_and_resolve():
    import vimd_kernels
    for old, new in (("bimamba_inner_fn", "bimamba_v2_inner_fn"), ("bimamba_inner_ref", "bimamba_v2_inner_ref")):
        with pytest.warns(DeprecationWarning, match=new):
            assert getattr(vimd_kernels, old) is getattr(vimd_kernels, new)
    with pytest.raises(AttributeError, match="no_such_name"):
        vimd_kernels.no_such_name
