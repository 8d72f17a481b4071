"""The compat layer_norm_fn / rms_norm_fn / RMSNorm (mamba_ssm 2.x ``layer_norm`` and 1.x
``layernorm``) against plain PyTorch: residual add, prenorm, residual_in_fp32, gradients."""
import pytest
import torch
import torch.nn.functional as F

from vimd_kernels.compat import layer_norm as v2
from vimd_kernels.compat import layernorm as v1


def _plain(x, w, b, residual, eps, prenorm, residual_in_fp32, rms):
    """Upstream's kernel: the sum in float32, normalised unrounded, out in x's dtype; the residual
    returned in residual's dtype, else float32 under residual_in_fp32, else x's dtype."""
    h = x.float() + (residual.float() if residual is not None else 0)
    if rms:
        y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w.float()
        y = y + b.float() if b is not None else y
    else:
        y = F.layer_norm(h, h.shape[-1:], w.float(), None if b is None else b.float(), eps)
    res_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else x.dtype)
    return (y.to(x.dtype), h.to(res_dtype)) if prenorm else y.to(x.dtype)


CASES = [(dtype, has_res, prenorm, fp32, rms) for dtype in (torch.float32, torch.bfloat16)
         for has_res in (False, True) for prenorm in (False, True) for fp32 in (False, True)
         for rms in (False, True)]


@pytest.mark.parametrize("dtype, has_res, prenorm, fp32, rms", CASES)
def test_add_norm_vs_plain(dtype, has_res, prenorm, fp32, rms):
    x = torch.randn(2, 5, 8).to(dtype).requires_grad_()
    res = torch.randn(2, 5, 8).to(torch.float32 if fp32 else dtype).requires_grad_() if has_res else None
    w = (torch.rand(8) + 0.5).requires_grad_()
    b = None if rms else (torch.randn(8) * 0.1).requires_grad_()
    kw = dict(residual=res, eps=1e-5, prenorm=prenorm, residual_in_fp32=fp32)
    fns = [lambda: v2.layer_norm_fn(x, w, b, is_rms_norm=rms, **kw),
           lambda: v1.layer_norm_fn(x, w, b, is_rms_norm=rms, **kw)]
    if rms:
        fns += [lambda: v2.rms_norm_fn(x, w, b, **kw), lambda: v1.rms_norm_fn(x, w, b, **kw)]
    expected = _plain(x, w, b, res, 1e-5, prenorm, fp32, rms)
    expected = expected if prenorm else (expected,)
    leaves = [t for t in (x, res, w, b) if t is not None]
    g_out = [torch.randn(e.shape).to(e.dtype) for e in expected]
    want = torch.autograd.grad(expected, leaves, g_out)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    for fn in fns:
        got = fn()
        got = got if prenorm else (got,)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype and g.shape == e.shape
            torch.testing.assert_close(g, e, **tol)
        for g, e in zip(torch.autograd.grad(got, leaves, g_out), want):
            torch.testing.assert_close(g, e, **tol)


def test_prenorm_returns_x_when_nothing_is_added():
    x = torch.randn(3, 4)
    _, residual = v2.rms_norm_fn(x, torch.ones(4), None, prenorm=True)
    assert residual is x
    _, residual = v2.rms_norm_fn(x.bfloat16(), torch.ones(4), None, prenorm=True, residual_in_fp32=True)
    assert residual.dtype == torch.float32


def test_v2_extras_and_unsupported():
    x, x1, rowscale = torch.randn(3, 4), torch.randn(3, 4), torch.rand(3)
    w, w1 = torch.rand(4) + 0.5, torch.rand(4) + 0.5
    y, y1, res = v2.layer_norm_fn(x, w, None, x1=x1, weight1=w1, rowscale=rowscale, prenorm=True)
    h = x * rowscale[:, None] + x1
    torch.testing.assert_close(res, h)
    torch.testing.assert_close(y, F.layer_norm(h, (4,), w, eps=1e-6))
    torch.testing.assert_close(y1, F.layer_norm(h, (4,), w1, eps=1e-6))
    assert v2.rms_norm_fn(x, w, None, return_dropout_mask=True)[1:] == (None, None)
    with pytest.raises(NotImplementedError, match="dropout_p"):
        v2.rms_norm_fn(x, w, None, dropout_p=0.1)
    with pytest.raises(NotImplementedError, match="dropout_p"):
        v2.RMSNorm(4, dropout_p=0.1)


@pytest.mark.parametrize("cls", [v1.RMSNorm, v2.RMSNorm])
def test_rmsnorm_module(cls):
    norm = cls(6, eps=1e-5, dtype=torch.float64)
    assert norm.bias is None and norm.weight.dtype == torch.float64 and torch.equal(norm.weight, torch.ones(6, dtype=torch.float64))
    assert [n for n, _ in norm.named_parameters()] == ["weight"]
    x, res = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    out, new_res = norm(x, residual=res, prenorm=True)
    torch.testing.assert_close(new_res, x + res)
    torch.testing.assert_close(out, _plain(x, norm.weight, None, res, 1e-5, False, False, True))
