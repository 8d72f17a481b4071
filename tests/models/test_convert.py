"""Converters, on synthetic state dicts that carry the official releases' names and shapes."""
import math

import pytest
import torch

import vimd_models as vm
from vimd_models.weights import load_official


def _mamba_keys(prefix, d, n, conv=4, expand=2, bidir=False):
    di, r = expand * d, math.ceil(d / 16)
    keys = {f"{prefix}in_proj.weight": (2 * di, d), f"{prefix}out_proj.weight": (d, di)}
    for s, a in ([("", "A_log")] + ([("_b", "A_b_log")] if bidir else [])):
        keys.update({f"{prefix}conv1d{s}.weight": (di, 1, conv), f"{prefix}conv1d{s}.bias": (di,),
                     f"{prefix}x_proj{s}.weight": (r + 2 * n, di), f"{prefix}dt_proj{s}.weight": (di, r),
                     f"{prefix}dt_proj{s}.bias": (di,), f"{prefix}{a}": (di, n), f"{prefix}D{s}": (di,)})
    return keys


def hustvl_vim_keys(d=48, depth=4, n=8, patch=4, img=32, classes=10):
    m = ((img - patch) // patch + 1) ** 2
    keys = {"patch_embed.proj.weight": (d, 3, patch, patch), "patch_embed.proj.bias": (d,),
            "cls_token": (1, 1, d), "pos_embed": (1, m + 1, d), "norm_f.weight": (d,),
            "head.weight": (classes, d), "head.bias": (classes,)}
    for i in range(depth):
        keys[f"layers.{i}.norm.weight"] = (d,)
        keys.update(_mamba_keys(f"layers.{i}.mixer.", d, n, bidir=True))
    return keys


def ntire_dvmsr_keys(d=16, depths=(1, 1), n=8, scale=4):
    keys = {"conv_first.weight": (d, 3, 3, 3), "conv_first.bias": (d,), "patch_embed.norm.weight": (d,),
            "patch_embed.norm.bias": (d,), "norm_f.weight": (d,), "norm_f.bias": (d,),
            "conv_after_body.weight": (d, d, 3, 3), "conv_after_body.bias": (d,),
            "upsample.0.weight": (3 * scale * scale, d, 3, 3), "upsample.0.bias": (3 * scale * scale,)}
    for i, depth in enumerate(depths):
        keys.update({f"layers.{i}.conv.weight": (d, d, 3, 3), f"layers.{i}.conv.bias": (d,)})
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}."
            keys.update({p + "norm.weight": (d,), p + "norm.bias": (d,)})
            keys.update(_mamba_keys(p + "mixer.", d, n))
    return keys


def _bn(p, c):
    return {p + "weight": (c,), p + "bias": (c,), p + "running_mean": (c,), p + "running_var": (c,),
            p + "num_batches_tracked": ()}


def srresnet_release_keys(c=16, blocks=2):
    keys = {"conv1.0.weight": (c, 3, 9, 9), "conv1.0.bias": (c,), "conv1.1.weight": (1,),
            "conv2.0.weight": (c, c, 3, 3), **_bn("conv2.1.", c), "conv3.weight": (3, c, 9, 9), "conv3.bias": (3,)}
    for i in range(blocks):
        p = f"trunk.{i}.rcb."
        keys.update({p + "0.weight": (c, c, 3, 3), **_bn(p + "1.", c), p + "2.weight": (1,),
                     p + "3.weight": (c, c, 3, 3), **_bn(p + "4.", c)})
    for i in range(2):
        p = f"upsampling.{i}.upsample_block."
        keys.update({p + "0.weight": (4 * c, c, 3, 3), p + "0.bias": (4 * c,), p + "2.weight": (1,)})
    return keys


def _synthetic(keys):
    return {k: (torch.tensor(7) if s == () else torch.randn(s)) for k, s in keys.items()}


CASES = [
    ("vim_micro", hustvl_vim_keys, "model", {"layers.1.mixer.A_b_log": "layers.1.mixer.A_b_log",
                                             "pos_embed": "pos_embed"}),
    ("dvmsr_micro", ntire_dvmsr_keys, "params", {"patch_embed.norm.weight": "norm_in.weight",
                                                 "layers.1.residual_group.blocks.0.mixer.dt_proj.bias":
                                                 "layers.1.blocks.0.mixer.dt_proj.bias"}),
    ("srresnet_micro", srresnet_release_keys, "state_dict", {"trunk.1.rcb.4.running_var": "trunk.1.rcb.4.running_var",
                                                             "upsampling.1.upsample_block.2.weight":
                                                             "upsampling.1.upsample_block.2.weight"}),
]


@pytest.mark.parametrize("name,keys_fn,wrapper,probe", CASES)
def test_load_official_by_name(name, keys_fn, wrapper, probe, tmp_path):
    sd = _synthetic(keys_fn())
    model = vm.create_model(name)
    load_official(model, {wrapper: sd, "epoch": 3})
    ours = model.state_dict()
    for official, mine in probe.items():
        torch.testing.assert_close(ours[mine], sd[official])
    # from a file too (torch.load with weights_only=True)
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: {"module." + k: v * 2 for k, v in sd.items()}}, path)
    load_official(model, path)
    for official, mine in probe.items():
        if sd[official].is_floating_point():
            torch.testing.assert_close(model.state_dict()[mine], sd[official] * 2)


def test_errors_list_missing_unexpected_and_shapes():
    sd = _synthetic(hustvl_vim_keys())
    del sd["layers.2.mixer.D_b"]
    sd["layers.0.mixer.rope.freqs"] = torch.zeros(3)
    sd["head.weight"] = torch.zeros(11, 48)
    with pytest.raises(ValueError) as e:
        load_official(vm.create_model("vim_micro"), sd)
    msg = str(e.value)
    assert "missing (1): layers.2.mixer.D_b" in msg
    assert "unexpected (1): layers.0.mixer.rope.freqs" in msg
    assert "head.weight: checkpoint (11, 48) vs model (10, 48)" in msg


def test_unsupported_family():
    with pytest.raises(TypeError, match="no converter"):
        load_official(vm.create_model("resnet_micro"), {})


def test_full_size_key_sets_match():
    """The full-size releases' names and shapes cover our full-size models exactly."""
    for name, keys in (("vim_tiny_patch16_224", hustvl_vim_keys(192, 24, 16, 16, 224, 1000)),
                       ("dvmsr", ntire_dvmsr_keys(60, (2, 2, 2, 2), 16)),
                       ("srresnet_x4", srresnet_release_keys(64, 16))):
        from vimd_models.weights import convert_state_dict
        model = vm.create_model(name)
        conv = convert_state_dict(model, {k: torch.empty(0) for k in keys})
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert set(conv) == set(ours), name
        assert all(ours[k] == tuple(keys[o]) for o, k in zip(keys, conv)), name


def test_the_earlier_import_path_still_works():
    import vimd_models.convert as convert
    import vimd_models.weights as weights
    assert convert.load_official is weights.load_official and convert.load_pretrained is weights.load_pretrained
