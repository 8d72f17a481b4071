"""`vimd sr` and `vimd predict` on tiny models with random weights and PNGs written here."""
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import vimd_models as vm
from vimd_models.checkpoint import save_weights
from vimd_models.cli import main
from vimd_models.data.transforms import load_image
from vimd_models.infer import _starts, super_resolve


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _png(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def _weights(path, name, **kwargs):
    m = vm.create_model(name, **kwargs)
    save_weights(str(path), m.state_dict())
    return str(path), m.eval()


def _config(path, **cfg):
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_tile_origins_cover_the_axis():
    assert _starts(50, 64, 16) == [0]
    assert _starts(100, 64, 48) == [0, 16, 32, 36]
    assert _starts(128, 64, 0) == [0, 64]


def test_tiled_equals_untiled_for_a_conv_net():
    """SRResNet micro sees about 12 LR pixels around each output: with a quarter of the overlap
    (12) covering that, the blended tiles give the untiled output."""
    model = vm.create_model("srresnet_micro").eval()
    lr = torch.rand(1, 3, 76, 100)
    with torch.no_grad():
        full = super_resolve(model, lr, tile=0)
        tiled = super_resolve(model, lr, tile=64, overlap=48)
        short = super_resolve(model, lr, tile=64, overlap=8)
    assert full.shape == tiled.shape == (1, 3, 304, 400)
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-5)
    assert (short - full).abs().max() > 1e-4  # too little overlap: the tile borders show


def test_tiled_dvmsr_runs_and_stays_close():
    model = vm.create_model("dvmsr_micro", backend="ref", depths=(1,), embed_dim=8, d_state=4).eval()
    lr = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        full = super_resolve(model, lr, tile=0)
        tiled = super_resolve(model, lr, tile=16, overlap=8)
    assert tiled.shape == full.shape == (1, 3, 96, 160)
    assert 0 <= tiled.min() and tiled.max() <= 1


def test_cli_sr_with_a_model_name(tmp_path, capsys):
    w, model = _weights(tmp_path / "w.safetensors", "srresnet_micro")
    a, b = _png(tmp_path / "a.png", 20, 24), _png(tmp_path / "b.jpg.png", 12, 12, seed=1)
    out = tmp_path / "out"
    assert main(["sr", a, b, "--weights", w, "--model", "srresnet_micro", "-o", str(out), "--tile", "16",
                 "--overlap", "8", "--device", "cpu"]) == 0
    got = np.asarray(Image.open(out / "a_x4.png"))
    assert got.shape == (80, 96, 3) and (out / "b.jpg_x4.png").is_file()
    lr = load_image(a)[None]
    with torch.no_grad():
        want = super_resolve(model, lr, 16, 8)[0].mul(255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)
    assert "a_x4.png (24x20 -> 96x80)" in capsys.readouterr().out


def test_cli_sr_with_a_config_and_an_official_checkpoint(tmp_path):
    cfg = _config(tmp_path / "sr.yaml", task="sr", backend="ref",
                  model={"name": "dvmsr_micro", "kwargs": {"embed_dim": 8, "depths": [1], "d_state": 4}})
    m = vm.create_model("dvmsr_micro", embed_dim=8, depths=(1,), d_state=4)
    sd = {k.replace("norm_in.", "patch_embed.norm.").replace("layers.0.blocks.", "layers.0.residual_group.blocks."): v
          for k, v in m.state_dict().items()}  # the NTIRE release's names
    torch.save({"params": sd}, tmp_path / "release.pth")
    img = _png(tmp_path / "x.png", 10, 14)
    assert main(["sr", img, "--weights", str(tmp_path / "release.pth"), "--config", cfg, "-o",
                 str(tmp_path / "o"), "--tile", "0"]) == 0
    assert np.asarray(Image.open(tmp_path / "o" / "x_x4.png")).shape == (40, 56, 3)


@pytest.mark.parametrize("case,msg", [
    ("bad_image", "cannot read image {tmp}/broken.png"),
    ("missing_image", "image not found: {tmp}/nope.png"),
    ("missing_weights", "--weights: weights file {tmp}/nope.safetensors not found"),
    ("wrong_weights", "--weights: checkpoint does not fit DVMSR"),
    ("classifier", "is not a super-resolution model"),
])
def test_cli_sr_errors_are_one_line(case, msg, tmp_path, capsys):
    w, _ = _weights(tmp_path / "w.safetensors", "srresnet_micro")
    img = _png(tmp_path / "ok.png", 8, 8)
    (tmp_path / "broken.png").write_text("not a png")
    args = {"bad_image": [img, str(tmp_path / "broken.png"), "--weights", w, "--model", "srresnet_micro"],
            "missing_image": [str(tmp_path / "nope.png"), "--weights", w, "--model", "srresnet_micro"],
            "missing_weights": [img, "--weights", str(tmp_path / "nope.safetensors"), "--model", "srresnet_micro"],
            "wrong_weights": [img, "--weights", w, "--model", "dvmsr_micro"],
            "classifier": [img, "--weights", w, "--model", "vim_micro"]}[case]
    assert main(["sr", *args, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vimd: error: ") and msg.format(tmp=tmp_path) in err and "\n" not in err, err


def _classify_config(tmp_path, root=None):
    data = {"dataset": "folder", "root": root, "img_size": 32, "lr_size": 8} if root else \
        {"dataset": "synthetic", "num_classes": 3, "img_size": 32, "lr_size": 8}
    return _config(tmp_path / "c.yaml", task="classify", backend="ref", data=data,
                   model={"name": "vim_micro", "kwargs": {"embed_dim": 16, "depth": 1, "d_state": 4}})


def test_cli_predict_names_classes_from_the_dataset(tmp_path, capsys):
    for i, c in enumerate(("cat", "dog", "owl")):
        os.makedirs(tmp_path / "data" / "val" / c)
        _png(tmp_path / "data" / "val" / c / "1.png", 8, 8, seed=i)
    cfg = _classify_config(tmp_path, str(tmp_path / "data"))
    w, model = _weights(tmp_path / "w.safetensors", "vim_micro", num_classes=3, embed_dim=16, depth=1, d_state=4)
    imgs = [_png(tmp_path / "p.png", 40, 50), _png(tmp_path / "q.png", 32, 32, seed=3)]
    assert main(["predict", *imgs, "--weights", w, "--config", cfg, "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == imgs[0] and len(out) == 8  # path + top-3 (3 classes) per image
    assert {ln.split()[1] for ln in out[1:4]} == {"cat", "dog", "owl"}
    x = load_image(imgs[1])[None]  # 32x32: the eval crop is the image itself
    with torch.no_grad():
        p = model.eval()(x).softmax(-1)[0]
    best = int(p.argmax())
    assert out[5].split()[1:] == [("cat", "dog", "owl")[best], f"({best})"]
    assert out[5].split()[0] == f"{p[best].item():.2%}"


def test_cli_predict_without_dataset_names_gives_indices(tmp_path, capsys):
    cfg = _classify_config(tmp_path)
    w, _ = _weights(tmp_path / "w.safetensors", "vim_micro", num_classes=7, embed_dim=16, depth=1, d_state=4)
    assert main(["predict", _png(tmp_path / "p.png", 32, 32), "--weights", w, "--config", cfg, "--topk", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].split()[1] in {str(i) for i in range(7)}


def test_cli_predict_errors(tmp_path, capsys):
    cfg = _classify_config(tmp_path)
    img = _png(tmp_path / "p.png", 32, 32)
    assert main(["predict", img, "--weights", str(tmp_path / "none.safetensors"), "--config", cfg]) == 2
    assert f"--weights: weights file {tmp_path}/none.safetensors not found" in capsys.readouterr().err
    w, _ = _weights(tmp_path / "w.safetensors", "srresnet_micro")
    assert main(["predict", img, "--weights", w, "--config", "demo_sr"]) == 2
    assert "use vimd sr" in capsys.readouterr().err


def test_cli_predict_an_srvm_student_on_its_lr_view(tmp_path, capsys):
    """The ViMD student: its head's classes come from the weights, its input is the LR view."""
    kw = {"sr_arch": "srresnet_micro", "img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "d_state": 4}
    cfg = _config(tmp_path / "v.yaml", task="vimd", backend="ref", model={"name": "srvm_net", "kwargs": kw},
                  data={"dataset": "synthetic", "num_classes": 4, "img_size": 32, "lr_size": 8})
    w, model = _weights(tmp_path / "w.safetensors", "srvm_net", num_classes=4, **kw)
    img = _png(tmp_path / "p.png", 32, 32)
    assert main(["predict", img, "--weights", w, "--config", cfg]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5
    lr = torch.nn.functional.interpolate(load_image(img)[None], size=(8, 8), mode="bicubic", antialias=True,
                                         align_corners=False).clamp(0, 1)
    with torch.no_grad():
        best = int(model(lr).argmax())
    assert out[1].split()[-1] == f"({best})"
