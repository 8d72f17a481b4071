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


def test_nt_xent_class_positives_equal_image_positives_when_every_label_differs():
    torch.manual_seed(0)
    za, zb = torch.randn(6, 8), torch.randn(6, 8)
    torch.testing.assert_close(losses.nt_xent(za, zb, 0.5, torch.arange(6)), losses.nt_xent(za, zb, 0.5))
    # same-class rows pulled together lower the supervised loss, not the image-pair one
    lab = torch.tensor([0, 0, 0, 1, 1, 1])
    clustered = torch.cat([torch.randn(1, 8).expand(3, 8), torch.randn(1, 8).expand(3, 8)]) + 0.01 * torch.randn(6, 8)
    assert losses.nt_xent(clustered, clustered, 0.5, lab) < losses.nt_xent(za, zb, 0.5, lab)


def test_adversarial_kl_counts_only_agreeing_samples():
    t = torch.tensor([[4.0, 0.0], [4.0, 0.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # agrees on sample 0 only
    kl0 = torch.nn.functional.kl_div(torch.log_softmax(s[:1], 1), torch.log_softmax(t[:1], 1),
                                     reduction="sum", log_target=True)
    torch.testing.assert_close(losses.adversarial_kl(s, t), kl0 / 2)


def test_gaussian_kl_is_zero_at_the_reference_and_scale_free():
    from vimd_models.distill.dfkd import gaussian_kl
    m, v = torch.tensor([0.5, -2.0]), torch.tensor([1.0, 9.0])
    assert gaussian_kl(m, v, m, v, eps=0) == 0
    a = gaussian_kl(m + 0.1, v * 1.2, m, v, eps=0)
    b = gaussian_kl(100 * (m + 0.1), 1e4 * v * 1.2, 100 * m, 1e4 * v, eps=0)
    torch.testing.assert_close(a, b)


def test_patch_similarity_entropy_prefers_diverse_tokens():
    from vimd_models.distill.dfkd import patch_similarity_entropy
    torch.manual_seed(0)
    same = torch.randn(2, 1, 16).expand(2, 20, 16) + 0.01 * torch.randn(2, 20, 16)
    varied = torch.randn(2, 20, 16) + torch.linspace(-1, 1, 20).view(1, 20, 1) * torch.randn(1, 1, 16)
    assert patch_similarity_entropy(varied) > patch_similarity_entropy(same) + 1


def test_norm_stats_keep_the_class_token_apart():
    from vimd_models.distill.dfkd import record_norm_stats
    import vimd_models
    m = vimd_models.create_model("hrvm_net", num_classes=4, embed_dim=16, depth=1, d_state=4, patch_size=8,
                                 stride=8, img_size=32, backend="ref").eval()
    stats = record_norm_stats(m, [torch.rand(3, 3, 32, 32)])
    names = {k.rsplit(".", 1)[0] for k in stats}
    assert names and all(f"{n}.{k}" in stats for n in names for k in ("mean", "var", "cls_mean", "cls_var"))
    n = sorted(names)[0]
    assert not torch.allclose(stats[f"{n}.mean"], stats[f"{n}.cls_mean"])
