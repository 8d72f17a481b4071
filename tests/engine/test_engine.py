import glob
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from vimd_models.checkpoint import load_state, save_state, save_weights
from vimd_models.weights import load, load_into, read_checkpoint
from vimd_models.engine.config import load_config, parse_override
from vimd_models.errors import UserError
from vimd_models.engine.metrics import psnr_y, rgb_to_y, ssim_y, topk_correct
from vimd_models.engine.optim import lr_at

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---- config -------------------------------------------------------------------------------------
def test_every_shipped_config_loads():
    files = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
    assert len(files) >= 10
    for f in files:
        cfg = load_config(f)
        assert cfg["name"] == os.path.splitext(os.path.basename(f))[0]


def test_config_errors_name_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {epohcs: 3}\n")
    with pytest.raises(UserError, match=r"unknown config key 'train.epohcs' in .*c.yaml"):
        load_config(str(p))
    with pytest.raises(UserError, match="optim.lr"):
        load_config(None, ["optim.lr=-1"])
    with pytest.raises(UserError, match="'task'"):
        load_config(None, ["task=distill_everything"])
    with pytest.raises(UserError, match="key.sub=value"):
        load_config(None, ["epochs"])
    p.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(str(p))
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    cfg = load_config(None, ["model.kwargs={depth: 3}", "data.batch_size=7"])
    assert cfg["model"]["kwargs"] == {"depth": 3} and cfg["data"]["batch_size"] == 7


def test_invalid_yaml_names_file_line_and_column(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("task: classify\nmodel: {name: vim\ntrain: {epochs: 3}\n")
    with pytest.raises(UserError) as e:
        load_config(str(p))
    assert str(e.value).splitlines() == [
        f"invalid YAML in {p}, line 3, column 6: while parsing a flow mapping (line 2, column 8): "
        "expected ',' or '}', but got ':'",
        "  2 | model: {name: vim",
        "  3 | train: {epochs: 3}",
        "    |      ^"]
    p.write_text("task: classify\n seed: 3\n")
    with pytest.raises(UserError) as e:
        load_config(str(p))
    assert str(e.value).splitlines() == [
        f"invalid YAML in {p}, line 2, column 6: mapping values are not allowed here",
        "  2 |  seed: 3", "    |      ^"]


def test_dotted_override_sets_one_model_argument():
    from vimd_models.tasks import model_from_config

    def params(overrides):
        cfg = load_config(os.path.join(ROOT, "configs", "demo_teacher.yaml"), overrides)
        m = model_from_config(cfg, num_classes=cfg["data"]["num_classes"])
        return cfg["model"]["kwargs"], sum(p.numel() for p in m.parameters())

    kwargs, n = params([])
    assert n == 96_874
    kw32, n32 = params(["model.kwargs.img_size=32"])
    assert kw32 == {**kwargs, "img_size": 32}
    # the same 4-block, 48-wide model; only the position embedding has 16 patches instead of 64
    assert n32 == 96_874 - 48 * (64 - 16)
    assert params(["model.kwargs={img_size: 32}"])[0] == {"img_size": 32}  # a mapping value replaces
    cfg = load_config(None, ["teacher.kwargs.depths=[2, 2]", "teacher.kwargs.a.b=1", "teacher.kwargs.a.c=2"])
    assert cfg["teacher"]["kwargs"] == {"depths": [2, 2], "a": {"b": 1, "c": 2}}
    with pytest.raises(UserError, match="'depths' in 'teacher.kwargs' is not a mapping"):
        load_config(None, ["teacher.kwargs.depths=[2]", "teacher.kwargs.depths.x=1"])
    with pytest.raises(UserError, match="unknown config key 'modle'"):
        load_config(None, ["modle.kwargs.img_size=32"])


def test_schedule_warmup_then_cosine():
    cfg = load_config(None, ["optim.lr=1.0", "sched.warmup_epochs=1", "sched.warmup_lr=0", "sched.min_lr=0"])
    assert lr_at(0, 100, 10, cfg) == 0 and lr_at(5, 100, 10, cfg) == pytest.approx(0.5)
    assert lr_at(10, 100, 10, cfg) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, cfg) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, cfg) == pytest.approx(0.0, abs=1e-12)


def test_step_milestones_count_iterations_in_iteration_runs():
    it = load_config(None, ["optim.lr=1.0", "sched.name=step", "sched.warmup_epochs=0", "sched.milestones=[250, 400]",
                            "sched.gamma=0.5", "train.iterations=500"])
    # steps_per_epoch (50) does not matter: milestones are iterations
    assert [lr_at(s, 500, 50, it) for s in (0, 249, 250, 399, 400, 499)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    ep = load_config(None, ["optim.lr=1.0", "sched.name=step", "sched.warmup_epochs=0", "sched.milestones=[2, 4]",
                            "train.epochs=5"])
    assert [lr_at(s, 250, 50, ep) for s in (99, 100, 199, 200)] == [1, 0.5, 0.5, 0.25]
    warm = load_config(None, ["optim.lr=1.0", "sched.warmup_iters=10", "sched.warmup_lr=0", "train.iterations=100"])
    assert lr_at(5, 100, 3, warm) == pytest.approx(0.5) and lr_at(10, 100, 3, warm) == pytest.approx(1.0)
    with pytest.raises(UserError, match="'sched.milestones' count epochs and must not pass train.epochs"):
        load_config(None, ["sched.milestones=[250, 400]", "train.epochs=300"])
    with pytest.raises(UserError, match="count iterations and must not pass train.iterations"):
        load_config(None, ["sched.milestones=[250, 400]", "train.iterations=300"])
    for bad in ("train.iterations=0", "train.eval_every=0", "sched.milestones=[3, 2]", "sched.warmup_iters=-1"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            load_config(None, [bad])


# ---- checkpoints --------------------------------------------------------------------------------
def test_state_roundtrip_with_optimizer(tmp_path):
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": m.state_dict(), "opt": opt.state_dict(), "pos": {"epoch": 1, "x": [1.5, None, "a"]},
             "rng": torch.get_rng_state()}
    path = str(tmp_path / "s.safetensors")
    save_state(path, state, {"task": "t"})
    back, meta = load_state(path)
    assert meta == {"task": "t"} and back["pos"] == state["pos"]
    assert torch.equal(back["rng"], state["rng"])
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    opt2.load_state_dict(back["opt"])  # int keys came back as ints
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with safe_open(path, "pt") as f:  # a plain safetensors file: no pickle anywhere
        assert "pos" not in f.keys()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    path = str(tmp_path / "s.safetensors")
    save_state(path, {"model": torch.nn.Linear(3, 2).state_dict()})
    data = (tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "s.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt"):
        load_state(path)
    with pytest.raises(UserError, match="not found"):
        load_state(str(tmp_path / "missing.safetensors"))
    w = str(tmp_path / "w.safetensors")
    save_weights(w, torch.nn.Linear(3, 2).state_dict())
    with pytest.raises(UserError, match=r"shape mismatch: weight \(2, 3\) vs \(4, 3\)"):
        load_into(torch.nn.Linear(3, 4), read_checkpoint(w), w)
    with pytest.raises(UserError, match="missing keys: 1.weight"):
        load_into(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)), {"0." + k: v for k, v in read_checkpoint(w).items()}, w)
    with pytest.raises(UserError, match=r"^--weights: .*weight: checkpoint \(2, 3\) vs model \(4, 3\)"):
        load(torch.nn.Linear(3, 4), w, what="--weights")
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 32)
    with pytest.raises(UserError, match="^--weights: .*corrupt"):
        load(torch.nn.Linear(3, 2), w, what="--weights")
    with pytest.raises(UserError, match=f"^--weights: weights file {tmp_path}/nope.pth not found$"):
        load(torch.nn.Linear(3, 2), str(tmp_path / "nope.pth"), what="--weights")
    pickled = str(tmp_path / "p.safetensors")
    torch.save({"a": 1}, pickled)  # a pickle under a safetensors name is refused, never unpickled
    with pytest.raises(UserError):
        load_state(pickled)


# ---- metrics ------------------------------------------------------------------------------------
def test_psnr_ssim_y():
    hr = torch.rand(2, 3, 24, 24)
    assert torch.isinf(psnr_y(hr, hr, 0)).logical_not().all()  # capped, finite
    sr = (hr + 10 / 255).clamp(0, 1)
    y1, y2 = rgb_to_y((sr * 255).round() / 255), rgb_to_y((hr * 255).round() / 255)
    mse = (y1 - y2)[..., 4:-4, 4:-4].pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(psnr_y(sr, hr, 4), 10 * torch.log10(255 ** 2 / mse))
    torch.testing.assert_close(ssim_y(hr, hr, 4), torch.ones(2, dtype=torch.float64))
    assert (ssim_y(torch.rand(2, 3, 24, 24), hr, 4) < 0.5).all()
    assert rgb_to_y(torch.ones(1, 3, 1, 1)).item() == pytest.approx(235.0) and rgb_to_y(torch.zeros(1, 3, 1, 1)).item() == 16.0


def test_topk():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    assert topk_correct(logits, torch.tensor([2, 0]), (1, 2, 5)) == {"top1": 1, "top2": 2, "top5": 2}


# ---- CLI ----------------------------------------------------------------------------------------
def _cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "vimd_models.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("args,msg", [
    (["train", "configs/nope.yaml"], "config file not found"),
    (["train", "configs/demo_teacher.yaml", "train.epohcs=2"], "unknown config key 'train.epohcs'"),
    (["train", "configs/demo_teacher.yaml", "model.name=vim_nano"], "unknown model 'vim_nano'; did you mean vim_micro"),
    (["train", "configs/hrvm_cub.yaml", "data.root=/nonexistent/CUB"], "CUB-200-2011 folder not found: /nonexistent/CUB"),
    (["train", "configs/demo_teacher.yaml", "data.batch_size=0"], "data.batch_size"),
    (["eval", "configs/demo_teacher.yaml", "--weights", "/nonexistent.safetensors"], "weights file /nonexistent.safetensors not found"),
])
def test_cli_user_errors_are_one_line(args, msg, tmp_path):
    r = _cli(*args, f"output_dir={tmp_path}" if args[0] == "train" else "output_dir=x", cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and msg in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_train_then_eval(tmp_path):
    common = ["model.kwargs={embed_dim: 16, depth: 1, d_state: 4, patch_size: 8, stride: 8, img_size: 32}",
              "data.img_size=32", "data.train_size=16", "data.val_size=8", "data.batch_size=8", "train.epochs=1",
              "train.progress=false", f"output_dir={tmp_path}", "name=t", "backend=ref"]
    r = _cli("train", "configs/demo_teacher.yaml", *common, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "val_top1" in r.stdout
    e = _cli("eval", "configs/demo_teacher.yaml", *common, "--weights", str(tmp_path / "t" / "model.safetensors"), cwd=ROOT)
    assert e.returncode == 0, e.stderr
    top1 = float(e.stdout.split("top1:")[1].split()[0])
    assert 0 <= top1 <= 100 and not math.isnan(top1)


def test_cli_corrupt_image_in_a_worker_is_one_line(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for c in ("a", "b"):
            os.makedirs(tmp_path / "d" / split / c)
            for i in range(2):
                Image.new("RGB", (20, 20), (i * 50, 0, 0)).save(tmp_path / "d" / split / c / f"{i}.png")
    (tmp_path / "d" / "train" / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    r = _cli("train", "configs/demo_teacher.yaml", "data.dataset=folder", f"data.root={tmp_path / 'd'}",
             "data.batch_size=4", "data.num_workers=1", "data.img_size=16", "model.kwargs={img_size: 16, depth: 1}",
             f"output_dir={tmp_path}", "train.progress=false", "data.check=false", cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("vimd: error: cannot read image ") and "1.png" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bf16_autocast_step(tmp_path):
    from vimd_models.engine.trainer import train
    cfg = load_config(None, ["backend=ref", "model.name=vim_micro", "model.kwargs={embed_dim: 16, depth: 1, d_state: 4}",
                             "data.img_size=32", "data.train_size=8", "data.val_size=4", "data.batch_size=4",
                             "train.epochs=1", "train.amp=bf16", "train.progress=false", f"output_dir={tmp_path}"])
    r = train(cfg)
    assert math.isfinite(r["last"]["train_loss"]) and r["history"][0]["step"] == 2


def test_step_callbacks_and_trainer_parts(tmp_path):
    from vimd_models.engine.trainer import Trainer
    cfg = load_config(None, ["backend=ref", "model.name=vim_micro", "model.kwargs={embed_dim: 16, depth: 1, d_state: 4}",
                             "data.img_size=32", "data.train_size=12", "data.val_size=4", "data.batch_size=4",
                             "train.epochs=2", "train.progress=false", f"output_dir={tmp_path}"])
    seen = []
    trainer = Trainer(cfg, on_step_end=[lambda tr, step: seen.append((step, tr.pos["step_in_epoch"]))])
    assert trainer.steps_per_epoch == 3 and trainer.total_steps == 6
    r = trainer.fit()
    assert seen == [(1, 1), (2, 2), (3, 3), (4, 1), (5, 2), (6, 3)]
    assert [h["step"] for h in r["history"]] == [3, 6] and r["best"]["val_top1"] >= 0


def test_cli_models_and_flops():
    r = _cli("flops", "vim_micro", "--input", "3,32,32", "depth=1", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    vals = dict(line.split(": ") for line in r.stdout.strip().splitlines())
    assert float(vals["full"].split()[0]) > float(vals["counter"].split()[0]) > 0
    for shape in ("3,x,32", "32,32", "3,0,32"):  # not integers, 2 of 3, a zero size
        bad = _cli("flops", "vim_micro", "--input", shape, cwd=ROOT)
        assert bad.returncode == 2 and f"--input must be C,H,W (3 positive integers), got '{shape}'" in bad.stderr


def test_weights_from_a_training_state(tmp_path):
    m = torch.nn.Linear(3, 2)
    path = str(tmp_path / "checkpoint.safetensors")
    save_state(path, {"task": {f"model.{k}": v for k, v in m.state_dict().items()} | {"teacher.w": torch.ones(1)}})
    w = read_checkpoint(path)
    assert set(w) == {"weight", "bias"} and torch.equal(w["weight"], m.weight.detach())


def test_resume_from_a_mismatched_or_corrupt_checkpoint(tmp_path):
    from vimd_models.engine.trainer import train
    cfg = load_config(None, ["backend=ref", "model.name=vim_micro", "model.kwargs={embed_dim: 16, depth: 1}",
                             "data.img_size=32", "data.train_size=8", "data.batch_size=4", f"output_dir={tmp_path}",
                             "name=r", "train.progress=false"])
    os.makedirs(tmp_path / "r")
    save_state(str(tmp_path / "r" / "checkpoint.safetensors"), {"task": {}}, {"task": "classify", "model": "resnet_micro"})
    with pytest.raises(UserError, match="written for model 'resnet_micro'"):
        train(cfg, resume="auto")
    save_state(str(tmp_path / "r" / "checkpoint.safetensors"), {"task": {"model.head.weight": torch.zeros(3, 3)}},
               {"task": "classify", "model": "vim_micro"})
    with pytest.raises(UserError, match="does not match the model"):
        train(cfg, resume="auto")
    (tmp_path / "r" / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        train(cfg, resume="auto")
