"""Fine-tuning from release weights (``model.finetune``, ``create_model(pretrained=True)``,
``model.sr_checkpoint``): every official container format, written here from tiny models under the
official key names and container layouts (nothing is downloaded)."""
import argparse
import os

import pytest
import torch

import vimd_models as vm
from vimd_models.checkpoint import save_weights
from vimd_models.weights import load_pretrained, resample_pos_embed
from vimd_models.errors import UserError
from vimd_models.weights import load

from .test_convert import _bn, _synthetic, ntire_dvmsr_keys, srresnet_release_keys

TINY_KW = dict(embed_dim=16, depth=2, d_state=4, backend="ref")
FLAG = []


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


class Payload:
    """An arbitrary pickled class: unpickling it would record itself in FLAG."""

    def __setstate__(self, state):
        FLAG.append(state)


def torchvision_resnet_keys(layers, widths, classes=1000, stem=7):
    """torchvision's ResNet (basic blocks) state-dict names and shapes."""
    keys = {"conv1.weight": (widths[0], 3, stem, stem), **_bn("bn1.", widths[0])}
    cin = widths[0]
    for s, (n, w) in enumerate(zip(layers, widths)):
        for i in range(n):
            p = f"layer{s + 1}.{i}."
            keys.update({p + "conv1.weight": (w, cin if i == 0 else w, 3, 3), **_bn(p + "bn1.", w),
                         p + "conv2.weight": (w, w, 3, 3), **_bn(p + "bn2.", w)})
            if i == 0 and (s > 0 or cin != w):
                keys.update({p + "downsample.0.weight": (w, cin, 1, 1), **_bn(p + "downsample.1.", w)})
        cin = w
    keys.update({"fc.weight": (classes, widths[-1]), "fc.bias": (classes,)})
    return keys


def _vim_release(path, model, key="model", **extra):
    """hustvl's / DeiT's training-script layout: weights under ``key`` beside the optimizer state,
    the epoch and the pickled argparse.Namespace."""
    torch.save({key: model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 299,
                "args": argparse.Namespace(model="vim_tiny", lr=5e-4, finetune=""), **extra}, path)
    return str(path)


def _assert_loaded(got: dict, want: dict, skip=()):
    n = 0
    for k, v in want.items():
        if k not in skip:
            torch.testing.assert_close(got[k], v, msg=k)
            n += 1
    assert n > 0


@pytest.mark.parametrize("key", ["model", "model_ema"])
def test_vim_release_drops_the_head_with_one_line(tmp_path, key):
    src = vm.create_model("vim_micro", num_classes=1000, **TINY_KW)
    path = _vim_release(tmp_path / "vim_t_midclstok_ft_78p3acc.pth", src, key)
    if key == "model_ema":  # DeiT writes both; a file with only the EMA weights loads them
        torch.save({"model_ema": src.state_dict(), "args": argparse.Namespace(model_ema=True)}, path)
    model = vm.create_model("vim_micro", num_classes=7, **TINY_KW)
    fresh_head = model.head.weight.clone()
    lines = []
    report = load_pretrained(model, path, log=lines.append)
    _assert_loaded(model.state_dict(), src.state_dict(), skip=("head.weight", "head.bias"))
    torch.testing.assert_close(model.head.weight, fresh_head)
    assert report["dropped"] == ["head.weight", "head.bias"] and report["target"] == ""
    assert report["missing"] == [] and report["unexpected"] == []
    assert len(lines) == 2
    assert lines[0].startswith("vim_t_midclstok_ft_78p3acc.pth: head dropped (head.weight (1000, 16)")
    assert "missing 0, unexpected 0" in lines[1]


def test_pos_embed_resampled_to_the_new_grid(tmp_path):
    """A stride-16-like 8x8 grid into hrvm_net at a 15x15 grid (stride 2): bicubic on the patch grid,
    class entry kept in the middle."""
    src = vm.create_model("vim_micro", **TINY_KW)  # 32x32, patch 4: 8x8 grid
    path = _vim_release(tmp_path / "vim_t_midclstok_76p1acc.pth", src)
    model = vm.create_model("hrvm_net", num_classes=10, img_size=32, patch_size=4, stride=2, **TINY_KW)
    load_pretrained(model, path)
    assert model.patch_embed.grid_size == (15, 15)
    torch.testing.assert_close(model.pos_embed, resample_pos_embed(src.pos_embed.detach(), (15, 15)))
    _assert_loaded(model.state_dict(), src.state_dict(), skip=("pos_embed",))


def test_srresnet_pth_tar_and_dvmsr_pth(tmp_path):
    for name, keys, wrapper, file in (("srresnet_micro", srresnet_release_keys(), "state_dict",
                                       "SRResNet_x4-ImageNet-6dd5216c.pth.tar"),
                                      ("dvmsr_micro", ntire_dvmsr_keys(), "params", "DVMSR.pth")):
        sd = _synthetic(keys)
        torch.save({wrapper: sd, "epoch": 5}, tmp_path / file)
        model = vm.create_model(name)
        report = load_pretrained(model, tmp_path / file, require_all=True)
        assert report["missing"] == [] and report["unexpected"] == []
        ours = model.state_dict()
        probe = "layers.1.blocks.0.mixer.A_log" if name == "dvmsr_micro" else "trunk.1.rcb.1.running_var"
        official = "layers.1.residual_group.blocks.0.mixer.A_log" if name == "dvmsr_micro" else probe
        torch.testing.assert_close(ours[probe], sd[official])
        assert len(report["loaded"]) == len(sd)


def test_torchvision_resnet_state_dict(tmp_path):
    """torchvision's names are ResNet's: a plain state dict (no wrapper), the 1000-class fc dropped."""
    for name, layers in (("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))):
        model = vm.create_model(name, num_classes=1000)
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert torchvision_resnet_keys(layers, (64, 128, 256, 512)) == want
    sd = _synthetic(torchvision_resnet_keys((1, 1, 1, 1), (8, 16, 32, 64), stem=3))
    torch.save(sd, tmp_path / "resnet18-f37072fd.pth")
    model = vm.create_model("resnet_micro", num_classes=5)
    report = load_pretrained(model, tmp_path / "resnet18-f37072fd.pth")
    assert report["dropped"] == ["fc.weight", "fc.bias"] and report["missing"] == []
    _assert_loaded(model.state_dict(), sd, skip=("fc.weight", "fc.bias"))


def test_our_safetensors(tmp_path):
    src = vm.create_model("vim_micro", **TINY_KW)
    save_weights(str(tmp_path / "m.safetensors"), src.state_dict())
    model = vm.create_model("vim_micro", **TINY_KW)
    assert load_pretrained(model, tmp_path / "m.safetensors")["dropped"] == []
    _assert_loaded(model.state_dict(), src.state_dict())


def test_srvm_net_takes_each_release_into_its_part(tmp_path):
    """A Vim release goes to ``classifier.*`` (head dropped), an SR release to ``sr.*``."""
    kw = dict(sr_arch="srresnet_micro", img_size=32, patch_size=4, **TINY_KW)
    model = vm.create_model("srvm_net", num_classes=10, **kw)
    sr_before = {k: v.clone() for k, v in model.sr.state_dict().items()}
    vim = vm.create_model("vim_micro", num_classes=1000, **TINY_KW)
    report = load_pretrained(model, _vim_release(tmp_path / "vim.pth", vim))
    assert report["target"] == "classifier" and report["dropped"] == ["head.weight", "head.bias"]
    _assert_loaded(model.classifier.state_dict(), vim.state_dict(), skip=("head.weight", "head.bias"))
    _assert_loaded(model.sr.state_dict(), sr_before)
    sd = _synthetic(srresnet_release_keys())
    torch.save({"state_dict": sd}, tmp_path / "sr.pth.tar")
    assert load_pretrained(model, tmp_path / "sr.pth.tar")["target"] == "sr"
    _assert_loaded(model.sr.state_dict(), sd)
    # through create_model's pretrained_file: the same loader
    m2 = vm.create_model("srvm_net", pretrained=True, pretrained_file=tmp_path / "vim.pth", num_classes=10, **kw)
    _assert_loaded(m2.classifier.state_dict(), vim.state_dict(), skip=("head.weight", "head.bias"))


def test_sr_checkpoint_reads_the_releases(tmp_path):
    """ViMD's model.sr_checkpoint: the SRResNet x4 .pth.tar and the DVMSR .pth (all keys required)."""
    from vimd_models.tasks.vimd import ViMDTask
    from vimd_models.engine.config import load_config
    for arch, keys, wrapper in (("srresnet_micro", srresnet_release_keys(), "state_dict"),
                                ("dvmsr_micro", ntire_dvmsr_keys(), "params")):
        sd = _synthetic(keys)
        path = tmp_path / f"{arch}.pth"
        torch.save({wrapper: sd}, path)
        cfg = load_config("demo_vimd", ["distill.alpha=0", f"model.sr_checkpoint={path}",
                                        f"model.kwargs.sr_arch={arch}", "backend=ref"])
        task = ViMDTask(cfg, num_classes=10)
        key = "conv3.bias" if arch == "srresnet_micro" else "conv_first.bias"
        torch.testing.assert_close(task.model.sr.state_dict()[key], sd[key])
        del sd[key]
        torch.save({wrapper: sd}, path)
        with pytest.raises(UserError, match=rf"model.sr_checkpoint.*missing 1 \({key}\)"):
            ViMDTask(cfg, num_classes=10)


def test_missing_file_is_one_line_naming_the_release_and_the_opt_out(tmp_path):
    model = vm.create_model("vim_micro", **TINY_KW)
    path = os.path.join("weights", "vim_t_midclstok_ft_78p3acc.pth")
    with pytest.raises(UserError) as e:
        load(model, path, finetune=True, what="config 'model.finetune'", opt_out="train from scratch with model.finetune=none")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"config 'model.finetune': weights file {path} not found; get vim_t_midclstok_ft_78p3acc.pth")
    assert "https://huggingface.co/hustvl/Vim-tiny-midclstok/resolve/main/vim_t_midclstok_ft_78p3acc.pth" in msg
    assert "into weights/" in msg and msg.endswith("model.finetune=none")
    with pytest.raises(UserError, match="resnet34-b627a593.pth.*https://download.pytorch.org/models/"):
        load(model, "weights/resnet34-b627a593.pth", finetune=True, what="config 'model.finetune'", opt_out="x")
    assert load(model, "none", finetune=True, what="config 'model.finetune'") is None
    assert load(model, None, finetune=True, what="config 'model.finetune'") is None


def test_trainer_stops_with_the_missing_file_line(tmp_path):
    from vimd_models.engine.config import load_config
    from vimd_models.engine.trainer import Trainer
    missing = tmp_path / "weights" / "vim_t_midclstok_ft_78p3acc.pth"
    cfg = load_config("demo_teacher", [f"model.finetune={missing}", f"output_dir={tmp_path}", "train.device=cpu",
                                       "data.train_size=64", "data.val_size=32", "data.check=false", "backend=ref"])
    with pytest.raises(UserError, match=r"model.finetune.*not found.*model.finetune=none$"):
        Trainer(cfg)


def test_namespace_allowed_other_pickled_classes_refused(tmp_path):
    src = vm.create_model("vim_micro", **TINY_KW)
    _vim_release(tmp_path / "ok.pth", src)
    load_pretrained(vm.create_model("vim_micro", **TINY_KW), tmp_path / "ok.pth")
    _vim_release(tmp_path / "bad.pth", src, payload=Payload())
    with pytest.raises(ValueError, match="not unpickled"):
        load_pretrained(vm.create_model("vim_micro", **TINY_KW), tmp_path / "bad.pth")
    with pytest.raises(UserError, match="model.finetune.*not unpickled"):
        load(vm.create_model("vim_micro", **TINY_KW), str(tmp_path / "bad.pth"), finetune=True,
             what="config 'model.finetune'")
    assert FLAG == []


def test_nothing_fitting_or_a_wrong_shape_fails(tmp_path):
    model = vm.create_model("vim_micro", **TINY_KW)
    with pytest.raises(ValueError, match="no tensor of checkpoint fits VisionMamba"):
        load_pretrained(model, {"model": {"encoder.weight": torch.zeros(3)}})
    sd = vm.create_model("vim_micro", **{**TINY_KW, "d_state": 8}).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch \d+ \(layers.0.mixer.A_b_log \(32, 8\) vs \(32, 4\)"):
        load_pretrained(model, sd)
