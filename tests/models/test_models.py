"""Shapes, taps and wiring of the micro variants (ref backend, short L)."""
import pytest
import torch

import vimd_models as vm


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_vim_micro_taps():
    m = vm.create_model("vim_micro", num_classes=7).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats = m.forward_features(x)
        logits, hs = m.forward_intermediates(x)
        _, (h_last, h0) = m.forward_intermediates(x, indices=[-1, 0])
        pooled = m.forward_head(feats, pre_logits=True)
    assert feats.shape == (2, 65, 48) and logits.shape == (2, 7) and len(hs) == 4
    assert all(h.shape == (2, 65, 48) for h in hs)
    torch.testing.assert_close(hs[-1], feats)          # in eval, H_last is the final-normed output
    torch.testing.assert_close(h_last, hs[3]) and torch.testing.assert_close(h0, hs[0])
    torch.testing.assert_close(pooled, feats[:, 32])   # middle class token (M // 2 = 32)
    torch.testing.assert_close(logits, m(x))
    assert not torch.allclose(hs[0], hs[1])
    assert m.num_features == 48 and len(m.feature_info) == 4 and m.feature_info[0]["reduction"] == 4
    for bad in ([4], [-5], 0, 5):
        with pytest.raises(ValueError, match="indices"):
            m.forward_intermediates(x, indices=bad)


def test_vim_kwargs_for_demo():
    m = vm.create_model("vim_micro", img_size=64, patch_size=8, num_classes=3)
    assert m.patch_embed.num_patches == 64 and m(torch.rand(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="x must be"):
        m(torch.rand(1, 3, 32, 32))


def test_vim_normalize_flag():
    m = vm.create_model("vim_micro", depth=1).eval()
    x = torch.rand(1, 3, 32, 32)
    m2 = vm.create_model("vim_micro", depth=1, normalize=True).eval()
    m2.load_state_dict(m.state_dict())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m((x - mean) / std))


def test_vim_backward_reaches_all_params():
    m = vm.create_model("vim_micro", depth=2, drop_path_rate=0.1)
    m(torch.rand(2, 3, 32, 32)).sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", ["dvmsr_micro", "dvmsr_rssb2d_micro", "srresnet_micro"])
def test_sr_micro(name):
    m = vm.create_model(name).eval()
    lr = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        sr, feats = m.forward_intermediates(lr)
        torch.testing.assert_close(sr, m(lr))
    assert m.upscale == 4 and sr.shape == (1, 3, 32, 48)
    assert len(feats) >= 2 and feats[0].shape[-2:] == (8, 12)


def test_dvmsr_residual_option_differs():
    a = vm.create_model("dvmsr_micro").eval()
    b = vm.create_model("dvmsr_micro", vimm_residual=True).eval()
    b.load_state_dict(a.state_dict())
    lr = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert not torch.allclose(a(lr), b(lr))


def test_resnet_micro():
    m = vm.create_model("resnet_micro", num_classes=5).eval()
    x = torch.rand(2, 3, 32, 32)
    logits, stages = m.forward_intermediates(x)
    assert logits.shape == (2, 5) and m.num_features == 64
    assert [tuple(s.shape[1:]) for s in stages] == [(8, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4)]
    assert [f["reduction"] for f in m.feature_info] == [1, 2, 4, 8]
    torch.testing.assert_close(m.forward_head(m.forward_features(x), pre_logits=True), stages[-1].mean((2, 3)))


def test_srvm_frozen_sr():
    m = vm.create_model("srvm_net", num_classes=4, sr_arch="srresnet_micro", img_size=64, embed_dim=32,
                        depth=2, d_state=4, patch_size=8)
    m.train()
    assert not m.sr.training and m.classifier.training
    assert all(not p.requires_grad for p in m.sr.parameters())
    lr = torch.rand(2, 3, 16, 16, requires_grad=True)
    logits, hs = m.forward_intermediates(lr, indices=[-1])
    assert logits.shape == (2, 4) and hs[0].shape == (2, 65, 32)
    logits.sum().backward()
    assert lr.grad is not None and lr.grad.abs().sum() > 0      # gradient flows through the frozen SR
    assert all(p.grad is None for p in m.sr.parameters())
    with pytest.raises(ValueError, match="lr must be"):
        m(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="sr_arch"):
        vm.create_model("srvm_net", sr_arch="bicubic")


def test_srvm_dvmsr_variant():
    m = vm.create_model("srvm_net", num_classes=3, sr_arch="dvmsr_micro", img_size=32, embed_dim=16,
                        depth=1, d_state=4, patch_size=8).eval()
    assert m(torch.rand(1, 3, 8, 8)).shape == (1, 3)


def test_hrvm_defaults():
    m = vm.create_model("hrvm_net", num_classes=10)
    assert m.patch_embed.stride == 8 and m.patch_embed.num_patches == 729 and m.embed_dim == 192
