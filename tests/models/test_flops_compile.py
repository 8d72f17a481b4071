import math

import pytest
import torch
import torch.nn.functional as F

import vimd_models as vm
from tests.tolerances import assert_close
from vimd_kernels import available_backends
from vimd_models.flops import count_flops


def test_dvmsr_counter_reproduces_ntire_figure():
    r = count_flops(vm.create_model("dvmsr"), (1, 3, 256, 256))
    assert abs(r["counter"] / 1e9 - 20.17) < 0.01           # the NTIRE 2024 log's 20.17 G
    assert 28e9 < r["full"] < 34e9 and r["custom"] > 0      # SPECS: ~30 G in full


def test_vim_tiny_counts_and_the_vimd_paper_figure():
    """Vim-Ti/16 at 224: the ViMD paper's 0.50 G is the custom (fused mixer op) part alone."""
    from vimd_models.flops import PAPER_FIGURES, paper_note
    r = count_flops(vm.create_model("vim_tiny_patch16_224"), (1, 3, 224, 224))
    assert (round(r["counter"] / 1e9, 3), round(r["full"] / 1e9, 3)) == (0.726, 1.576)
    assert round(r["custom"] / 1e9, 2) == PAPER_FIGURES["vim_tiny_patch16_224"][1] == 0.50
    assert "custom count" in paper_note("vim_tiny_patch16_224", (3, 224, 224))
    assert paper_note("vim_tiny_patch16_224", (3, 128, 128)) is None


def test_counts_analytic_micro():
    """vim_micro by hand: patch conv + head + per layer in_proj (counter: mamba_inner_fn, out_proj
    included, is the opaque fused op) and out_proj + x_proj/dt_proj/conv1d/scan of both directions (full)."""
    d, depth, n, L, b = 48, 4, 8, 65, 2
    di, r = 2 * d, math.ceil(d / 16)
    patch = 3 * 16 * d * 64 + d * 10
    per_layer = L * d * 2 * di
    counter = b * (patch + depth * per_layer)
    scan = 9 * di * L * n + 2 * di * L + 5 * di * L             # flops, as registered
    conv = 2 * di * L * 4 + di * L + 4 * di * L
    body = L * di * (r + 2 * n) + L * r * di                    # x_proj + dt_proj MACs
    full = counter + b * depth * (L * di * d + 2 * (body + (scan + conv) // 2))
    got = count_flops(vm.create_model("vim_micro"), (b, 3, 32, 32))
    assert got["counter"] == counter and got["full"] == full
    res = count_flops(vm.create_model("resnet_micro"), (1, 3, 32, 32))
    assert res["counter"] == res["full"] and res["custom"] == 0


def _mamba_oracle(mixer, x, reverse=False):
    """The Mamba mixer written out step by step in float64 (SPECS.md), for one direction."""
    sfx = "_b" if reverse else ""
    p = {k: v.double() for k, v in mixer.named_parameters()}
    xd = x.double().flip(1) if reverse else x.double()
    di, n, r = mixer.d_inner, mixer.d_state, mixer.dt_rank
    xz = xd @ p["in_proj.weight"].T
    u, z = xz[..., :di], xz[..., di:]
    w = p[f"conv1d{sfx}.weight"]
    u = F.silu(F.conv1d(F.pad(u.transpose(1, 2), (w.shape[-1] - 1, 0)), w, p[f"conv1d{sfx}.bias"], groups=di))
    u = u.transpose(1, 2)                                       # (b, L, di)
    dbl = u @ p[f"x_proj{sfx}.weight"].T
    delta = F.softplus(dbl[..., :r] @ p[f"dt_proj{sfx}.weight"].T + p[f"dt_proj{sfx}.bias"])
    Bm, Cm = dbl[..., r:r + n], dbl[..., r + n:]
    A = -torch.exp(p["A_b_log" if reverse else "A_log"])
    h = torch.zeros(x.shape[0], di, n, dtype=torch.float64)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * Bm[:, t, None, :] * u[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + p[f"D{sfx}"] * u[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return y.flip(1) if reverse else y


@pytest.mark.parametrize("bidirectional", [False, True])
def test_mixer_matches_float64_oracle(bidirectional):
    from vimd_models.layers import Mamba
    m = Mamba(24, d_state=4, bidirectional=bidirectional)
    x = torch.randn(2, 13, 24)
    y = _mamba_oracle(m, x)
    if bidirectional:
        y = (y + _mamba_oracle(m, x, reverse=True)) / 2
    want = y @ m.out_proj.weight.double().T
    assert_close(m(x), want, "scan", torch.float32, "mixer")


def _cpu_backends():
    return [b for b in available_backends() if b not in ("ref", "cuda")]


@pytest.mark.parametrize("name,shape", [("vim_micro", (2, 3, 32, 32)), ("dvmsr_micro", (1, 3, 8, 8)),
                                        ("dvmsr_rssb2d_micro", (1, 3, 6, 8))])
def test_backends_agree(name, shape):
    others = _cpu_backends()
    if not others:
        pytest.skip("only the ref backend is available on this machine (build vimd_kernels._C for 'cpu')")
    m = vm.create_model(name, backend="ref").eval()
    x = torch.rand(*shape)
    with torch.no_grad():
        ref = m(x)
        for b in others:
            vm.layers.set_backend(m, b)
            assert_close(m(x), ref, "scan", torch.float32, f"{name} backend={b}")


@pytest.mark.graph_capture
@pytest.mark.parametrize("name,shape", [("vim_micro", (1, 3, 32, 32)), ("dvmsr_micro", (1, 3, 6, 6))])
def test_compile_fullgraph_no_graph_break(name, shape):
    """Dynamo traces the whole model as one graph (eager backend: checks graph breaks, not codegen)."""
    torch._dynamo.reset()
    m = vm.create_model(name, depth=1) if name == "vim_micro" else vm.create_model(name)
    m.eval()
    x = torch.rand(*shape)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x))


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("vim_micro", (1, 3, 32, 32)), ("dvmsr_micro", (1, 3, 6, 6))])
def test_compile_inductor_fullgraph(name, shape):
    torch._dynamo.reset()
    m = vm.create_model(name).eval()
    x = torch.rand(*shape)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x), rtol=1e-4, atol=1e-4)
