"""The timm-style model interface: pretrained configs and loading (Hub or local file, never a
download here), checkpoint_path, features_only, reset_classifier, gradient checkpointing,
no_weight_decay, and the ViM variant table."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

import vimd_models as vm
from vimd_models import weights as hub
from vimd_models.checkpoint import save_weights
from vimd_models.weights import resample_pos_embed
from vimd_models.models import vim as vim_family
from vimd_models.registry import get_pretrained_cfg

from .test_convert import _synthetic, ntire_dvmsr_keys

TINY_KW = dict(embed_dim=16, depth=2, d_state=4, backend="ref")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _hustvl_file(path, model):
    """A checkpoint laid out as hustvl's release: {"model": sd, "args": Namespace, "epoch": ...}."""
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model="vim"), "epoch": 299}, path)
    return str(path)


def test_vim_variants_registered_from_one_table():
    names = ["vim_tiny_patch16_224", "vim_small_patch16_224", "vim_base_patch16_224",
             "vim_tiny_patch16_stride8_224", "vim_small_patch16_stride8_224", "vim_micro"]
    assert list(vim_family.VARIANTS) == names
    for name in names:
        fn = getattr(vim_family, name)
        assert fn.__name__ == name and fn.__doc__
    assert vm.create_model("vim_tiny_patch16_stride8_224", depth=1).patch_embed.stride == 8
    assert vm.list_models("vim_*", pretrained=True) == [
        "vim_small_patch16_224", "vim_small_patch16_stride8_224", "vim_tiny_patch16_224",
        "vim_tiny_patch16_stride8_224"]


def test_pretrained_cfg_attribute():
    m = vm.create_model("vim_micro")
    assert m.pretrained_cfg == m.default_cfg == {"architecture": "vim_micro"}
    cfg = get_pretrained_cfg("vim_tiny_patch16_224")
    assert cfg["hf_hub_id"] == "hustvl/Vim-tiny-midclstok" and cfg["hf_hub_filename"] == "vim_t_midclstok_76p1acc.pth"
    assert get_pretrained_cfg("vim_tiny_patch16_stride8_224")["hf_hub_filename"] == "vim_t_midclstok_ft_78p3acc.pth"
    assert get_pretrained_cfg("hrvm_net")["hf_hub_filename"] == "vim_t_midclstok_ft_78p3acc.pth"


def test_pretrained_from_the_hub(tmp_path, monkeypatch):
    src = vm.create_model("vim_tiny_patch16_224", depth=2)
    path = _hustvl_file(tmp_path / "vim_t_midclstok_76p1acc.pth", src)
    asked = []
    monkeypatch.setattr(hub, "hf_hub_download", lambda repo, name: asked.append((repo, name)) or path)
    m = vm.create_model("vim_tiny_patch16_224", pretrained=True, depth=2)
    assert asked == [("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth")]
    assert m.normalize  # the release expects ImageNet-normalised input
    for k, v in src.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, msg=k)
    assert not vm.create_model("vim_tiny_patch16_224", pretrained=True, depth=2, normalize=False).normalize


def test_pretrained_new_classes_and_grid(tmp_path):
    """hrvm_net at 10 classes and a 7x7 stride-4 grid from a 1000-class 4x4-grid file: the head
    stays fresh, pos_embed is resampled, everything else is loaded."""
    src = vm.create_model("vim_micro", num_classes=1000, img_size=32, patch_size=8, **TINY_KW)
    path = _hustvl_file(tmp_path / "w.pth", src)
    m = vm.create_model("hrvm_net", pretrained=True, pretrained_file=path, num_classes=10, img_size=32,
                        patch_size=8, stride=4, **TINY_KW)
    assert m.head.weight.shape == (10, 16) and not m.normalize
    got, want = m.state_dict(), src.state_dict()
    torch.testing.assert_close(got["pos_embed"], resample_pos_embed(want["pos_embed"], (7, 7)))
    for k in want:
        if k not in ("pos_embed", "head.weight", "head.bias"):
            torch.testing.assert_close(got[k], want[k], msg=k)


def test_resample_pos_embed_keeps_the_middle_class_entry():
    pe = torch.randn(1, 17, 4)  # 4x4 grid, class entry at 8
    assert resample_pos_embed(pe, (4, 4)) is pe
    out = resample_pos_embed(pe, (3, 3))
    assert out.shape == (1, 10, 4)
    torch.testing.assert_close(out[:, 4], pe[:, 8])
    grid = torch.cat((pe[:, :8], pe[:, 9:]), 1).reshape(1, 4, 4, 4).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=False)
    want = want.permute(0, 2, 3, 1).flatten(1, 2)
    torch.testing.assert_close(torch.cat((out[:, :4], out[:, 5:]), 1), want)


def test_pretrained_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"pass pretrained_file=.*SRResNet_x4-ImageNet-6dd5216c\.pth\.tar"):
        vm.create_model("srresnet_x4", pretrained=True)
    with pytest.raises(ValueError, match="no download location is registered for dvmsr_micro"):
        vm.create_model("dvmsr_micro", pretrained=True)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        vm.create_model("vim_micro", pretrained=True, pretrained_file=tmp_path / "nope.pth")
    with pytest.raises(TypeError, match="pretrained=True"):
        vm.create_model("vim_micro", pretrained_file="x.pth")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"vimd\[hub\]"):
        vm.create_model("vim_tiny_patch16_224", pretrained=True, depth=1)


OFFLINE = """
import sys, torch, vimd_models as vm
m = vm.create_model("vim_tiny_patch16_224", pretrained=True, depth=1)
torch.testing.assert_close(m.cls_token, torch.full_like(m.cls_token, 0.25))
print("loaded from the cache")
"""


def test_pretrained_from_an_offline_hub_cache(tmp_path):
    """huggingface_hub's own lookup, offline, in a cache laid out as it lays one out."""
    pytest.importorskip("huggingface_hub")
    src = vm.create_model("vim_tiny_patch16_224", depth=1)
    with torch.no_grad():
        src.cls_token.fill_(0.25)
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--hustvl--Vim-tiny-midclstok"
    (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    _hustvl_file(repo / "snapshots" / rev / "vim_t_midclstok_76p1acc.pth", src)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"))
    r = subprocess.run([sys.executable, "-c", OFFLINE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "loaded from the cache" in r.stdout, r.stderr[-2000:]


def test_checkpoint_path_ours_and_official(tmp_path):
    src = vm.create_model("vim_micro", **TINY_KW)
    save_weights(str(tmp_path / "m.safetensors"), src.state_dict())
    m = vm.create_model("vim_micro", checkpoint_path=tmp_path / "m.safetensors", **TINY_KW)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v)
    sd = _synthetic(ntire_dvmsr_keys())  # the NTIRE release's names
    torch.save({"params": sd}, tmp_path / "dvmsr.pth")
    d = vm.create_model("dvmsr_micro", checkpoint_path=str(tmp_path / "dvmsr.pth"))
    torch.testing.assert_close(d.norm_in.weight, sd["patch_embed.norm.weight"])
    r = vm.create_model("resnet_micro")  # no converter: our names only
    save_weights(str(tmp_path / "r.safetensors"), r.state_dict())
    r2 = vm.create_model("resnet_micro", checkpoint_path=str(tmp_path / "r.safetensors"))
    torch.testing.assert_close(r2.fc.weight, r.fc.weight)
    with pytest.raises(ValueError, match="head.weight: checkpoint"):
        vm.create_model("vim_micro", checkpoint_path=tmp_path / "m.safetensors", num_classes=3, **TINY_KW)


@pytest.mark.parametrize("name,kwargs,x,n", [
    ("vim_micro", TINY_KW, (2, 3, 32, 32), 16),
    ("resnet_micro", {}, (2, 3, 16, 16), 64),
    ("srvm_net", dict(sr_arch="srresnet_micro", img_size=32, patch_size=8, **TINY_KW), (2, 3, 8, 8), 16),
])
def test_reset_classifier(name, kwargs, x, n):
    m = vm.create_model(name, **kwargs).eval()
    m.reset_classifier(5)
    assert m.num_classes == 5 and m.get_classifier().out_features == 5
    assert m(torch.rand(x)).shape == (2, 5)
    m.reset_classifier(0)
    assert m(torch.rand(x)).shape == (2, n)
    with pytest.raises(TypeError, match="no classifier"):
        vm.create_model("dvmsr_micro").reset_classifier(3)


@pytest.mark.parametrize("name,kwargs,x", [
    ("vim_micro", dict(TINY_KW, drop_path_rate=0.3), (2, 3, 32, 32)),
    ("dvmsr_micro", dict(backend="ref", embed_dim=8, d_state=4), (2, 3, 8, 8)),
    ("srresnet_micro", {}, (2, 3, 8, 8)),
    ("resnet_micro", {}, (2, 3, 16, 16)),
    ("srvm_net", dict(sr_arch="srresnet_micro", img_size=32, patch_size=8, **TINY_KW), (2, 3, 8, 8)),
])
def test_grad_checkpointing_gives_the_same_gradients(name, kwargs, x):
    x = torch.rand(x)
    grads = []
    for enable in (False, True):
        torch.manual_seed(1)
        m = vm.create_model(name, **kwargs).train()
        m.set_grad_checkpointing(enable)
        torch.manual_seed(2)  # the same drop-path draws
        m(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-6, msg=k)


def test_no_weight_decay_names():
    nwd = vm.create_model("vim_micro", **TINY_KW).no_weight_decay()
    assert {"pos_embed", "cls_token", "layers.0.mixer.A_log", "layers.0.mixer.D", "layers.1.mixer.A_b_log",
            "layers.1.norm.weight", "head.bias"} <= nwd
    assert "layers.0.mixer.in_proj.weight" not in nwd and "head.weight" not in nwd
    assert "conv1.weight" not in vm.create_model("resnet_micro").no_weight_decay()


def test_features_only():
    f = vm.create_model("vim_micro", features_only=True, out_indices=(0, -1), **TINY_KW).eval()
    x = torch.rand(2, 3, 32, 32)
    maps = f(x)
    assert [tuple(t.shape) for t in maps] == [(2, 16, 8, 8)] * 2
    assert f.feature_info.channels() == [16, 16] and f.feature_info.reduction() == [4, 4]
    _, taps = f.model.forward_intermediates(x, [0, 1])
    tokens = taps[1]
    torch.testing.assert_close(maps[1], f.model.tokens_to_map(tokens))
    torch.testing.assert_close(maps[1][:, :, 0, 0], tokens[:, 0])           # first patch
    torch.testing.assert_close(maps[1][:, :, 4, 0], tokens[:, 33])          # after the class token (32)
    r = vm.create_model("resnet_micro", features_only=True, out_indices=[1, 3])
    assert [tuple(t.shape) for t in r(torch.rand(1, 3, 16, 16))] == [(1, 16, 8, 8), (1, 64, 2, 2)]
    s = vm.create_model("dvmsr_micro", features_only=True, out_indices=1)  # the last one
    assert [tuple(t.shape) for t in s(torch.rand(1, 3, 8, 8))] == [(1, 16, 8, 8)]
    assert [fi["reduction"] for fi in vm.create_model(
        "srvm_net", sr_arch="srresnet_micro", img_size=32, patch_size=8, **TINY_KW).feature_info] == [2, 2]
    with pytest.raises(ValueError, match="indices must hold ints"):
        vm.create_model("resnet_micro", features_only=True, out_indices=[4])
    with pytest.raises(ValueError, match="between 1 and 4"):
        vm.create_model("resnet_micro", features_only=True, out_indices=0)
    with pytest.raises(TypeError, match="features_only"):
        vm.create_model("resnet_micro", out_indices=[1])
