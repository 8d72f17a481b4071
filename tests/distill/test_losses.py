import math

import pytest
import torch
import torch.nn.functional as F

from vimd_models.distill import losses
from vimd_models.distill.dfkd import (SAM, AttentionGenerator, MixedHighOrderAttention, StatHooks, mhad_loss,
                                      record_norm_stats)


def test_kd_kl_matches_definition():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    T = 4.0
    p_t = F.softmax(t / T, 1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T * T
    torch.testing.assert_close(losses.kd_kl(s, t, T), manual)
    assert losses.kd_kl(t, t, T).abs() < 1e-6


def test_vimd_loss_composition():
    s, t, y = torch.randn(4, 6), torch.randn(4, 6), torch.randint(0, 6, (4,))
    fs = [torch.randn(4, 9, 8) for _ in range(3)]
    ft = [torch.randn(4, 9, 8) for _ in range(3)]
    total, c = losses.vimd(s, y, t, fs, ft, alpha=0.5, beta=20, temperature=4, label_smoothing=0.1)
    ce = F.cross_entropy(s, y, label_smoothing=0.1)
    hsd = sum(F.mse_loss(a, b) for a, b in zip(fs, ft))
    torch.testing.assert_close(total, ce + 0.5 * (losses.kd_kl(s, t, 4) + 20 * hsd))
    torch.testing.assert_close(c["hsd"], hsd)
    only_ce, c0 = losses.vimd(s, y, None, [], [], alpha=0, beta=0, temperature=4, label_smoothing=0.1)
    torch.testing.assert_close(only_ce, ce)
    assert set(c0) == {"ce"}
    released, c1 = losses.vimd(s, y, t, fs[-1:], ft[-1:], alpha=1, beta=5, temperature=4, label_smoothing=0.1,
                               use_ld=False)
    torch.testing.assert_close(released, ce + 5 * F.mse_loss(fs[-1], ft[-1]))
    with pytest.raises(ValueError, match="shape"):
        losses.hidden_state_mse([torch.randn(2, 3)], [torch.randn(2, 4)])


def test_sr_kd_and_nt_xent():
    sr, hr, t = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    total, c = losses.sr_kd(sr, hr, t, lam=0.5)
    torch.testing.assert_close(total, (sr - hr).abs().mean() + 0.5 * (sr - t).abs().mean())
    assert set(losses.sr_kd(sr, hr)[1]) == {"l1"}
    z = torch.randn(6, 4)
    aligned = losses.nt_xent(z, z, 0.07)
    shuffled = losses.nt_xent(z, z[torch.tensor([1, 2, 3, 4, 5, 0])], 0.07)
    assert aligned < shuffled
    # 2 samples, orthogonal pairs: every row has one positive at cos 0 and two negatives
    e = torch.eye(4)
    val = losses.nt_xent(e[:2], e[2:], 1.0)
    torch.testing.assert_close(val, torch.tensor(math.log(3.0)))


def test_bn_prior_is_zero_on_running_stats():
    bn = torch.nn.BatchNorm2d(3).eval()
    bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    hooks = StatHooks(torch.nn.Sequential(bn), "bn")
    x = torch.randn(4096, 3, 2, 2) * bn.running_var.sqrt().view(1, 3, 1, 1) + bn.running_mean.view(1, 3, 1, 1)
    bn(x)
    stats = [(m, v, mod.running_mean, mod.running_var) for m, v, mod in hooks.pop().values()]
    assert losses.bn_stat_loss(stats) < 0.1
    bn(x + 1)
    stats = [(m, v, mod.running_mean, mod.running_var) for m, v, mod in hooks.pop().values()]
    assert losses.bn_stat_loss(stats) > 1.5


def test_generator_sam_mhad_shapes_and_grads():
    g = AttentionGenerator(nz=16, ngf=4, img_size=32)
    x = g(torch.randn(3, 16))
    assert x.shape == (3, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    x.mean().backward()
    assert g.fc.weight.grad is not None
    sam = SAM(8, r=2)
    f = torch.randn(2, 8, 6, 6)
    assert sam(f).shape == f.shape
    mh = MixedHighOrderAttention(8)
    out = mh(f)
    assert out.shape == f.shape and (out.abs() <= f.abs() + 1e-6).all()  # a gate in (0, 1)
    ad = torch.nn.ModuleList([torch.nn.Conv2d(4, 8, 1)])
    loss = mhad_loss([f], [torch.randn(2, 4, 12, 12)], torch.nn.ModuleList([mh]), ad)  # pooled to 6x6
    loss.backward()
    assert ad[0].weight.grad is not None and loss > 0


def test_record_norm_stats():
    m = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.LayerNorm(5))
    xs = [torch.randn(8, 4) for _ in range(3)]
    st = record_norm_stats(m, xs)
    h = torch.stack([m[0](x) for x in xs])
    torch.testing.assert_close(st["1.mean"], h.mean(1).mean(0))
    torch.testing.assert_close(st["1.var"], h.var(1, unbiased=False).mean(0))
