"""Code written against mamba_ssm runs on vimd after install(): a tiny Vim-like model trains on the
cpu and ref backends (triton under the interpreter), decodes token by token, casts to bfloat16,
and upstream-shaped state dicts load strictly into the compat Mamba."""
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.tolerances import assert_close
from vimd_models.layers import Mamba as VimdMamba
from vimd_models.layers import set_backend


@pytest.fixture
def vim(upstream):
    """tests/compat/upstream_vim.py, imported through the upstream names (fresh each test)."""
    sys.modules.pop("tests.compat.upstream_vim", None)
    yield upstream("tests.compat.upstream_vim")
    sys.modules.pop("tests.compat.upstream_vim", None)


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 9, 6, generator=g), torch.randint(0, 3, (4,), generator=g)


def _train(model, steps=4):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = _data()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("bimamba_type", ["v2", "v1", "none"])
@pytest.mark.parametrize("backend_name", ["cpu", "ref"])
def test_tiny_vim_trains(vim, backend_name, bimamba_type):
    from vimd_kernels import available_backends
    if backend_name not in available_backends():
        pytest.skip(f"backend {backend_name!r} is not available here")
    model = set_backend(vim.TinyVim(bimamba_type=bimamba_type), backend_name)
    losses = _train(model)
    assert losses[-1] < losses[0], losses


def test_tiny_vim_backends_agree(vim):
    model = vim.TinyVim()
    x, _ = _data()
    out = {be: set_backend(model, be)(x) for be in ("cpu", "ref")}
    assert_close(out["cpu"], out["ref"], "scan", torch.float32, "cpu vs ref")


@pytest.mark.interpret
def test_tiny_vim_triton(vim):
    model = vim.TinyVim(d_model=8, depth=1)
    x, y = _data()
    x = x[:2, :5]
    outs, grads = {}, {}
    for be in ("triton", "ref"):
        model.zero_grad()
        outs[be] = set_backend(model, be)(x)
        outs[be].sum().backward()
        grads[be] = [p.grad.clone() for p in model.parameters()]
    assert_close(outs["triton"], outs["ref"], "scan", torch.float32, "triton forward")
    for i, (a, b) in enumerate(zip(grads["triton"], grads["ref"])):
        assert_close(a, b, "scan", torch.float32, f"triton grad {i}", scale=4)


def _decode(forward, x, prefill: int, params_cls):
    """Prefill ``prefill`` tokens, then one token at a time, as mamba_ssm's decode loop does."""
    params = params_cls(max_seqlen=x.shape[1], max_batch_size=x.shape[0])
    outs = [forward(x[:, :prefill], params)]
    params.seqlen_offset += prefill
    for t in range(prefill, x.shape[1]):
        outs.append(forward(x[:, t:t + 1], params))
        params.seqlen_offset += 1
    return torch.cat(outs, dim=1)


def test_tiny_vim_decodes_token_by_token(vim, upstream):
    params_cls = upstream("mamba_ssm.utils.generation").InferenceParams
    model = vim.TinyVim(bimamba_type="none", depth=2)
    x, _ = _data()
    full = model.forward_features(x)
    for prefill in (1, 5):  # shorter and longer than d_conv
        stepped = _decode(model.forward_features, x, prefill, params_cls)
        assert_close(stepped, full, "scan", torch.float32, f"prefill {prefill}")


@pytest.mark.parametrize("kw", [dict(), dict(bias=True, conv_bias=False, init_layer_scale=0.7),
                                dict(d_conv=2, dt_rank=3)])
def test_mamba_step_equals_full_forward(upstream, kw):
    Mamba = upstream("mamba_ssm.modules.mamba_simple").Mamba
    params_cls = upstream("mamba_ssm.utils.generation").InferenceParams
    m = Mamba(12, d_state=4, layer_idx=0, **kw)
    x = torch.randn(2, 7, 12)
    full = m(x)
    stepped = _decode(lambda t, p: m(t, inference_params=p), x, 3, params_cls)
    assert_close(stepped, full, "scan", torch.float32, "step")
    cache = m.allocate_inference_cache(2, 7)
    assert [tuple(s.shape) for s in cache] == [(2, 24, m.d_conv), (2, 24, 4)]


def test_mamba_d_state_128_backends_agree(upstream):
    """A mamba_ssm Mamba with d_state 128 (beyond the CUDA kernels' one-pass budget, within
    mamba_ssm's range) runs forward and backward through the public ops."""
    Mamba = upstream("mamba_ssm.modules.mamba_simple").Mamba
    m = Mamba(8, d_state=128)
    x = torch.randn(2, 7, 8)
    got = {}
    for be in ("cpu", "ref"):
        set_backend(m, be)
        m.zero_grad()
        y = m(x)
        y.square().sum().backward()
        got[be] = (y, m.A_log.grad.clone())
    assert got["cpu"][1].shape == (16, 128)
    assert_close(got["cpu"][0], got["ref"][0], "scan", torch.float32, "y")
    assert_close(got["cpu"][1], got["ref"][1], "scan", torch.float32, "dA_log")


def test_unfused_path_equals_fused(upstream):
    Mamba = upstream("mamba_ssm.modules.mamba_simple").Mamba
    m = Mamba(12, d_state=4, bias=True)
    slow = Mamba(12, d_state=4, bias=True, use_fast_path=False)
    slow.load_state_dict(m.state_dict())
    x = torch.randn(2, 7, 12)
    assert_close(slow(x), m(x), "scan", torch.float32, "use_fast_path=False")


def test_bfloat16_model(vim):
    model = vim.TinyVim()
    x, y = _data()
    ref = model(x)
    model.to(torch.bfloat16)
    out = model(x.bfloat16())
    assert out.dtype == torch.bfloat16
    F.cross_entropy(out.float(), y).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters())
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


# Mamba(d_model=8, d_state=4, d_conv=3, expand=2): d_inner 16, dt_rank ceil(8/16) = 1. Keys and
# shapes as upstream's constructor makes them (state-spaces/mamba mamba_ssm/modules/mamba_simple.py;
# hustvl/Vim mamba-1p1p1/mamba_ssm/modules/mamba_simple.py for bimamba_type, init_layer_scale).
UPSTREAM_ONE = {"in_proj.weight": (32, 8), "conv1d.weight": (16, 1, 3), "conv1d.bias": (16,),
                "x_proj.weight": (9, 16), "dt_proj.weight": (16, 1), "dt_proj.bias": (16,),
                "A_log": (16, 4), "D": (16,), "out_proj.weight": (8, 16)}
UPSTREAM_B = {"A_b_log": (16, 4), "conv1d_b.weight": (16, 1, 3), "conv1d_b.bias": (16,),
              "x_proj_b.weight": (9, 16), "dt_proj_b.weight": (16, 1), "dt_proj_b.bias": (16,),
              "D_b": (16,)}
UPSTREAM = {
    "none": (dict(), UPSTREAM_ONE),
    "v1": (dict(bimamba_type="v1"), {**UPSTREAM_ONE, "A_b_log": (16, 4)}),
    "v2": (dict(bimamba_type="v2", if_divide_out=True), {**UPSTREAM_ONE, **UPSTREAM_B}),
    "bias+scale": (dict(bias=True, init_layer_scale=1e-2),
                   {**UPSTREAM_ONE, "in_proj.bias": (32,), "out_proj.bias": (8,), "gamma": (8,)}),
}


@pytest.mark.parametrize("variant", sorted(UPSTREAM))
def test_upstream_state_dict_loads_strictly(upstream, variant):
    Mamba = upstream("mamba_ssm.modules.mamba_simple").Mamba
    kwargs, shapes = UPSTREAM[variant]
    m = Mamba(8, d_state=4, d_conv=3, **kwargs)
    sd = {k: torch.randn(s) for k, s in shapes.items()}
    m.load_state_dict(sd, strict=True)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == shapes
    assert torch.isfinite(m(torch.randn(2, 5, 8))).all()


def test_v2_is_vim_formula_and_vimd_mixer(upstream):
    """Vim's v2 forward, literally: two mamba_inner_fn_no_out_proj calls (the second on flipped xz
    with the _b weights), summed (halved with if_divide_out), then out_proj; and the same module as
    vimd's bidirectional mixer."""
    Mamba = upstream("mamba_ssm.modules.mamba_simple").Mamba
    no_out_proj = upstream("mamba_ssm.ops.selective_scan_interface").mamba_inner_fn_no_out_proj
    x = torch.randn(2, 6, 8)
    for divide in (True, False):
        m = Mamba(8, d_state=4, bimamba_type="v2", if_divide_out=divide)
        xz = (m.in_proj.weight @ x.transpose(1, 2))

        def branch(xz, s):
            conv, xp, dt = getattr(m, "conv1d" + s), getattr(m, "x_proj" + s), getattr(m, "dt_proj" + s)
            A = -torch.exp(getattr(m, f"A{s}_log").float())
            return no_out_proj(xz, conv.weight, conv.bias, xp.weight, dt.weight, A, None, None,
                               getattr(m, "D" + s).float(), delta_bias=dt.bias.float(), delta_softplus=True)

        y = branch(xz, "") + branch(xz.flip([-1]), "_b").flip([-1])
        want = F.linear(y.transpose(1, 2) / (2 if divide else 1), m.out_proj.weight, m.out_proj.bias)
        assert_close(m(x), want, "scan", torch.float32, f"if_divide_out={divide}")
    ours = VimdMamba(8, d_state=4, bidirectional=True)
    ours.load_state_dict(m.state_dict())
    m.if_divide_out = True
    assert_close(ours(x), m(x), "scan", torch.float32, "vimd bidirectional")


def test_vim_options_and_unsupported(upstream):
    Mamba = upstream("mamba_ssm.modules.mamba_simple").Mamba
    assert Mamba(8, bimamba_type="v2", if_devide_out=True).if_divide_out  # Vim's earlier spelling
    m = Mamba(8, dt_init="constant", dt_scale=2.0)
    assert torch.allclose(m.dt_proj.weight, torch.full_like(m.dt_proj.weight, 2.0))
    assert m.dt_proj.bias._no_reinit and m.A_log._no_weight_decay and m.D._no_weight_decay
    params = upstream("mamba_ssm.utils.generation").InferenceParams(max_seqlen=4, max_batch_size=1)
    with pytest.raises(NotImplementedError, match="bimamba_type='v2'"):
        Mamba(8, bimamba_type="v2", layer_idx=0)(torch.randn(1, 3, 8), inference_params=params)
    with pytest.raises(NotImplementedError, match="use_fast_path=False"):
        Mamba(8, bimamba_type="v1", use_fast_path=False)
    with pytest.raises(NotImplementedError, match="dt_init"):
        Mamba(8, dt_init="xavier")
    with pytest.raises(NotImplementedError, match="generate"):
        upstream("mamba_ssm.utils.generation").GenerationMixin().generate(None, 4)


def test_hf_loaders_read_local_files(upstream, tmp_path):
    hf = upstream("mamba_ssm.utils.hf")
    (tmp_path / "config.json").write_text('{"d_model": 8}')
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    assert hf.load_config_hf(str(tmp_path)) == {"d_model": 8}
    sd = hf.load_state_dict_hf(str(tmp_path), dtype=torch.bfloat16)
    assert sd["w"].dtype == torch.bfloat16
    assert hf.load_state_dict_hf(str(tmp_path / "pytorch_model.bin"))["w"].dtype == torch.float32
