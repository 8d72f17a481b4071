"""causal_conv1d_fn on every available backend vs the float32 reference and the float64 oracle."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tests.kernels.helpers import KernelCase, backend_params, reduction_scale
from tests.kernels.oracle import conv64
from tests.tolerances import assert_close
from vimd_kernels import causal_conv1d_fn, causal_conv1d_ref

KERNEL = "causal_conv1d"


@dataclass(frozen=True)
class ConvCase(KernelCase):
    width: int = 4
    bias: bool = True
    silu: bool = True
    conv_layout: bool = False  # weight as nn.Conv1d stores it, (dim, 1, width)

    def __str__(self) -> str:
        opts = "".join(c if on else "-" for c, on in
                       (("b", self.bias), ("s", self.silu), ("r", self.reverse), ("3", self.conv_layout)))
        return f"b{self.batch}d{self.dim}L{self.L}w{self.width}-{opts}-{str(self.dtype)[6:]}"


def conv_inputs(case: ConvCase, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    wdt = torch.float64 if case.dtype == torch.float64 else torch.float32
    x = torch.randn(case.batch, case.dim, case.L, generator=gen).to(case.dtype)
    w = (torch.randn(case.dim, case.width, generator=gen, dtype=wdt) / case.width ** 0.5)
    if case.conv_layout:
        w = w.unsqueeze(1)
    b = torch.randn(case.dim, generator=gen, dtype=wdt) if case.bias else None
    return x, w, b


CASES = (
    [ConvCase(width=w, bias=w % 2 == 0, silu=w % 3 != 0, reverse=w in (3, 6, 8),
              conv_layout=w in (4, 7)) for w in range(2, 9)]
    + [ConvCase(L=1, width=4), ConvCase(L=3, width=8, reverse=True),  # L < width
       ConvCase(batch=1, dim=1, L=5, width=2, bias=False, silu=False),
       ConvCase(batch=2, dim=16, L=197, width=4, conv_layout=True),
       ConvCase(batch=2, dim=8, L=730, width=4, reverse=True, bias=False),
       ConvCase(batch=1, dim=4, L=2304, width=4)]
    + [ConvCase(dim=8, L=197, width=4, dtype=dt, reverse=r)
       for dt in (torch.float16, torch.bfloat16) for r in (False, True)]
    + [ConvCase(L=7, width=3, dtype=torch.float16, bias=False, silu=False)]
)


def _tiny(case: ConvCase) -> bool:
    return case.L <= 16 and case.batch * case.dim <= 8


def _act(case):
    return "silu" if case.silu else None


@pytest.mark.parametrize("backend,case", backend_params(KERNEL, CASES, _tiny))
def test_forward_and_gradients(backend, case):
    x0, w0, b0 = conv_inputs(case)
    x, w = x0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True) if b0 is not None else None
    out = causal_conv1d_fn(x, w, b, _act(case), reverse=case.reverse, backend=backend)
    assert out.shape == x.shape and out.dtype == case.dtype

    r = causal_conv1d_ref(x0, w0, b0, _act(case), reverse=case.reverse)
    assert_close(out, r, "conv", case.dtype, "out vs reference")
    xo, wo = x0.double().requires_grad_(True), w0.double().requires_grad_(True)
    bo = b0.double().requires_grad_(True) if b0 is not None else None
    o = conv64(xo, wo, bo, case.silu, case.reverse)
    assert_close(out, o, "conv", case.dtype, "out vs float64 oracle")

    dout = torch.randn(out.shape).to(case.dtype)
    (out * dout).sum().backward()
    (o * dout.double()).sum().backward()
    assert x.grad.dtype == x.dtype and w.grad.shape == w.shape
    assert_close(x.grad, xo.grad, "conv", case.dtype, "dx")
    n = case.batch * case.L
    assert_close(w.grad, wo.grad, "conv", case.dtype, "dweight", scale=reduction_scale(n))
    if b is not None:
        assert_close(b.grad, bo.grad, "conv", case.dtype, "dbias", scale=reduction_scale(n))


@pytest.mark.parametrize("backend,case", backend_params(KERNEL, [
    ConvCase(width=4), ConvCase(width=3, bias=False, silu=False), ConvCase(width=8, L=20, dim=8)],
    _tiny))
def test_reverse_is_flip_of_forward(backend, case):
    x0, w0, b0 = conv_inputs(case)
    x = x0.clone().requires_grad_(True)
    xf = x0.flip(-1).clone().requires_grad_(True)
    out = causal_conv1d_fn(x, w0, b0, _act(case), reverse=True, backend=backend)
    out_f = causal_conv1d_fn(xf, w0, b0, _act(case), reverse=False, backend=backend)
    assert_close(out, out_f.flip(-1), "conv", case.dtype, "out")
    dout = torch.randn(out.shape)
    (out * dout).sum().backward()
    (out_f * dout.flip(-1)).sum().backward()
    assert_close(x.grad, xf.grad.flip(-1), "conv", case.dtype, "dx")


@pytest.mark.parametrize("backend", backend_params(KERNEL))
def test_non_contiguous_inputs(backend):
    case = ConvCase(width=4, reverse=True)
    x0, w0, b0 = conv_inputs(case)
    x_nc = x0.transpose(1, 2).contiguous().transpose(1, 2)
    w_nc = w0.t().contiguous().t()
    assert not x_nc.is_contiguous() and not w_nc.is_contiguous()
    a = causal_conv1d_fn(x0, w0, b0, "silu", reverse=True, backend=backend)
    b = causal_conv1d_fn(x_nc, w_nc, b0, "silu", reverse=True, backend=backend)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", [p for p in backend_params(KERNEL) if p.values[0] in ("ref", "cpu")])
@pytest.mark.parametrize("case", [ConvCase(batch=1, dim=2, L=6, width=3, dtype=torch.float64),
                                  ConvCase(batch=2, dim=3, L=5, width=4, reverse=True, bias=False,
                                           dtype=torch.float64)], ids=str)
def test_gradcheck_float64(backend, case):
    x0, w0, b0 = conv_inputs(case)
    ts = [t.clone().requires_grad_(True) for t in (x0, w0, b0) if t is not None]

    def f(x, w, b=None):
        return causal_conv1d_fn(x, w, b, _act(case), reverse=case.reverse, backend=backend)

    assert torch.autograd.gradcheck(f, tuple(ts), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("reverse", (False, True))
def test_reference_follows_its_inputs_device(reverse):
    """Forward and hand backward of the reference on `meta` inputs give `meta` outputs only."""
    from vimd_kernels.causal_conv1d import reference as conv_ref
    x, w, b = (torch.empty(*s, device="meta") for s in ((2, 3, 9), (3, 4), (3,)))
    out = conv_ref.forward(x, w, b, True, reverse)
    for t in (out, *conv_ref.backward(x, w, b, torch.empty_like(out), True, reverse)):
        assert t is None or t.device.type == "meta"
