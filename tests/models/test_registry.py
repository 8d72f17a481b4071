import pytest
import torch

import vimd_models as vm

NAMES = ["vim_tiny_patch16_224", "vim_small_patch16_224", "vim_base_patch16_224",
         "vim_tiny_patch16_stride8_224", "vim_small_patch16_stride8_224", "vim_micro", "srresnet_x4",
         "srresnet_micro", "srvm_net", "hrvm_net", "dvmsr", "dvmsr_teacher", "dvmsr_rssb2d", "dvmsr_micro",
         "dvmsr_rssb2d_micro", "resnet18", "resnet34", "resnet_micro"]


def test_list_models():
    assert set(NAMES) <= set(vm.list_models())
    assert vm.list_models("vim_tiny*") == ["vim_tiny_patch16_224", "vim_tiny_patch16_stride8_224"]


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="vim_tiny_patch16_224"):
        vm.create_model("vim_tiny_patch16_244")
    n = len(vm.list_models())
    with pytest.raises(ValueError, match=rf"unknown model 'vim_nano'; did you mean vim_micro.*\? \(`vimd models` lists all {n}\)"):
        vm.create_model("vim_nano")
    with pytest.raises(ValueError, match=rf"^unknown model 'qwerty' \(`vimd models` lists all {n}\)$"):
        vm.create_model("qwerty")


@pytest.mark.parametrize("name", ["vim_micro", "dvmsr_micro", "resnet_micro", "srresnet_micro", "srvm_net"])
def test_unknown_kwarg_named(name):
    with pytest.raises(TypeError, match="bogus_arg"):
        vm.create_model(name, bogus_arg=1)


def test_register_duplicate_rejected():
    with pytest.raises(ValueError, match="already registered"):
        @vm.register_model
        def vim_micro():  # noqa: F811
            return None


def test_param_groups_split():
    m = vm.create_model("vim_micro")
    decay, no_decay = vm.param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert {"A_log", "A_b_log", "D", "D_b", "bias", "weight", "pos_embed", "cls_token"} <= nd  # weight: norms
    assert "layers.0.mixer.in_proj.weight" in d and "head.weight" in d and "patch_embed.proj.weight" in d
    assert not any(n.endswith(("A_log", "norm.weight", "bias", "pos_embed")) for n in d)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def _count(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,kwargs,expected", [
    ("vim_tiny_patch16_224", dict(num_classes=200), 6_993_608),
    ("vim_tiny_patch16_stride8_224", dict(num_classes=200), 7_095_944),
    ("vim_tiny_patch16_stride8_224", dict(num_classes=196), 7_095_172),
    ("vim_tiny_patch16_stride8_224", dict(num_classes=120), 7_080_504),
    ("vim_tiny_patch16_stride8_224", dict(num_classes=37), 7_064_485),
    ("vim_tiny_patch16_stride8_224", dict(num_classes=0), 7_057_344),
    ("hrvm_net", dict(num_classes=100), 7_076_644),
    ("dvmsr", {}, 424_428),
    ("srresnet_x4", {}, 1_547_350),
    ("resnet18", {}, 11_689_512),   # torchvision's count
    ("resnet34", {}, 21_797_672),
])
def test_exact_param_counts(name, kwargs, expected):
    assert _count(vm.create_model(name, **kwargs)) == expected


def test_srvm_param_count_is_sr_plus_vim():
    m = vm.create_model("srvm_net", num_classes=200)
    assert _count(m.sr) == 1_547_350 and _count(m.classifier) == 6_993_608


def test_cli_stops_quietly_when_its_reader_leaves():
    """`vimd models | grep -q NAME`: the reader exits first; no traceback, the SIGPIPE status."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "vimd_models.cli", "models"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # before the command has imported and written anything
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=120) in (0, 141)
    assert "Traceback" not in err and "Error" not in err, err
