"""What a run reports and leaves behind: device / backend / dtype / world size, file permissions,
errors on a line of their own under a progress bar, and a diverged loss (NaN / Inf) that stops the
run, keeps the last good checkpoint and resumes with a lower learning rate."""
import json
import math
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vimd_models import checkpoint
from vimd_models.checkpoint import load_state
from vimd_models.engine.config import load_config
from vimd_models.engine.distributed import resolve_device
from vimd_models.engine.trainer import Trainer, train
from vimd_models.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["backend=ref", "model.name=vim_micro", "model.kwargs={embed_dim: 16, depth: 1, d_state: 4}",
        "data.img_size=32", "data.train_size=8", "data.val_size=4", "data.batch_size=4", "train.epochs=1",
        "train.progress=false"]


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "vimd_models.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


# ---- device, backend, dtype, world size ---------------------------------------------------------
def test_run_reports_device_backend_dtype_and_world_size(tmp_path, capsys):
    cfg = load_config(None, TINY + [f"output_dir={tmp_path}", "name=r", "train.amp=bf16"])
    assert cfg["train"]["device"] == "auto"
    tr = Trainer(cfg)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert tr.device.type == want
    info = json.loads((tmp_path / "r" / "run_info.json").read_text())
    assert info["device"].split(":")[0] == want and info["backend"] == "ref"
    assert info["dtype"] == "bfloat16 autocast" and info["world_size"] == 1
    out = capsys.readouterr().out
    assert f"run {tmp_path / 'r'}: device {info['device']}, backend ref, dtype bfloat16 autocast, world size 1" in out


def test_device_values():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="train.device"):
        load_config(None, ["train.device=tpu"])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_backend_that_cannot_run_on_the_device_is_a_config_error(tmp_path):
    cfg = load_config(None, TINY + [f"output_dir={tmp_path}", "train.device=cpu", "backend=cuda"])
    with pytest.raises(UserError, match="config 'backend': backend='cuda' does not run on cpu"):
        Trainer(cfg)


# ---- permissions --------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_files_follow_the_umask(tmp_path, monkeypatch, umask):
    monkeypatch.setattr(checkpoint, "_umask", None)  # read again under this test's umask
    old = os.umask(umask)
    try:
        train(load_config(None, TINY + [f"output_dir={tmp_path}", "name=r"]))
    finally:
        os.umask(old)
    files = sorted(os.listdir(tmp_path / "r"))
    assert {"checkpoint.safetensors", "model.safetensors", "best.safetensors", "summary.csv", "curves.png",
            "config.yaml", "run_info.json"} <= set(files)
    modes = {f: stat.S_IMODE(os.stat(tmp_path / "r" / f).st_mode) for f in files}
    assert modes == dict.fromkeys(files, 0o666 & ~umask)


# ---- errors under a progress bar ----------------------------------------------------------------
def _screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: a carriage return goes back to column 0 and the
    characters written after it overwrite those before."""
    rows = []
    for raw in text.split("\n"):
        row: list[str] = []
        for seg in raw.split("\r"):
            row[: len(seg)] = seg
        rows.append("".join(row).rstrip())
    return rows


def _folder(root, bad: str):
    for split in ("train", "val"):
        for c in ("a", "b"):
            os.makedirs(root / split / c)
            for i in range(4):
                arr = np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    path = root / "train" / "b" / "3.png"
    data = path.read_bytes()
    # "header": not an image at all; "pixels": the header reads, the pixel data is cut short (the
    # full data check finds both; with data.check=headers the second is found while training)
    path.write_bytes(b"\x89PNG\r\n\x1a\n truncated" if bad == "header" else data[: len(data) // 2])
    return path


@pytest.mark.parametrize("bad,check,first", [
    ("header", "headers", "vimd: error: 1 of 16 image files cannot be read"),
    ("pixels", "full", "vimd: error: 1 of 16 image files cannot be read"),
    ("pixels", "headers", "vimd: error: cannot read image ")])
def test_error_line_starts_at_column_0_under_a_progress_bar(tmp_path, bad, check, first):
    path = _folder(tmp_path / "d", bad)
    r = _cli("train", "configs/demo_teacher.yaml", "data.dataset=folder", f"data.root={tmp_path / 'd'}",
             "data.batch_size=2", "data.img_size=16", "model.kwargs.img_size=16", "model.kwargs.depth=1",
             "backend=ref", f"output_dir={tmp_path}", "train.progress=true", f"data.check={check}")
    assert r.returncode == 2, r.stderr
    assert "%|" in r.stderr  # a bar was drawn
    rows = [row for row in _screen(r.stderr) if "vimd: error:" in row]
    assert len(rows) == 1 and rows[0].startswith(first) and str(path.name) in r.stderr, repr(r.stderr[-600:])


# ---- divergence ---------------------------------------------------------------------------------
def _poison_after(step: int):
    def on_step_end(trainer, global_step: int) -> None:
        if global_step == step:
            with torch.no_grad():
                trainer.task.model.head.weight.fill_(float("nan"))
    return on_step_end


def test_nan_loss_stops_keeps_the_checkpoint_and_resumes_with_a_lower_lr(tmp_path):
    cfg = load_config(None, TINY + [f"output_dir={tmp_path}", "name=r", "data.train_size=24", "train.epochs=2",
                                    "train.ckpt_every=2", "optim.lr=0.01"])
    with pytest.raises(UserError) as e:
        train(cfg, on_step_end=[_poison_after(3)])  # the weights go NaN after step 3: step 4's loss is NaN
    msg = str(e.value)
    config = tmp_path / "r" / "config.yaml"
    assert msg == ("training diverged: loss term 'ce' is nan at step 4 (epoch 1, lr 0.005); the checkpoint "
                   f"of step 2 is kept: run `vimd train {config} --resume optim.lr=<lower than 0.01>`")
    state, _ = load_state(str(tmp_path / "r" / "checkpoint.safetensors"))
    assert state["pos"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["task"].values())

    resumed = Trainer(load_config(str(config), ["optim.lr=0.001", "optim.weight_decay=0.01"]))
    resumed.resume("auto")
    assert [g["weight_decay"] for g in resumed.opt.param_groups] == [0.01, 0.0]  # the config's, not the checkpoint's
    assert resumed.lr_at(2) == pytest.approx(1e-6 + (0.001 - 1e-6) * 2 / 6)  # warming up to the new lr
    res = resumed.fit()
    assert [h["step"] for h in res["history"]] == [6, 12]
    assert math.isfinite(res["last"]["train_loss"]) and res["last"]["lr"] < 0.001


def test_non_finite_weights_never_overwrite_the_checkpoint(tmp_path):
    tr = Trainer(load_config(None, TINY + [f"output_dir={tmp_path}", "name=r"]))
    tr.save_checkpoint()
    before = (tmp_path / "r" / "checkpoint.safetensors").read_bytes()
    _poison_after(0)(tr, 0)
    with pytest.raises(UserError, match=r"weight model.head.weight is not finite after step 0 .*checkpoint of step 0 is kept"):
        tr.save_checkpoint()
    assert (tmp_path / "r" / "checkpoint.safetensors").read_bytes() == before


def test_cli_divergence_is_one_line_and_resume_takes_overrides(tmp_path):
    # epoch 2 multiplies the lr by 1e30 (step schedule): the loss overflows
    common = ["configs/demo_teacher.yaml", "backend=ref", "model.kwargs={embed_dim: 16, depth: 1, d_state: 4, "
              "patch_size: 8, stride: 8, img_size: 32}", "data.img_size=32", "data.train_size=16", "data.val_size=8",
              "data.batch_size=8", "train.epochs=2", "train.progress=false", f"output_dir={tmp_path}", "name=d",
              "optim.name=sgd", "optim.clip_grad=0", "sched.name=step", "sched.milestones=[1]", "sched.gamma=1e30",
              "sched.warmup_epochs=0"]
    r = _cli("train", *common)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("vimd: error: training diverged: loss term 'ce' is ")
    assert "the checkpoint of step 2 is kept" in r.stderr and "--resume optim.lr=<lower than 0.008>" in r.stderr
    ok = _cli("train", *common, "--resume", "optim.lr=1e-4", "sched.gamma=1")
    assert ok.returncode == 0, ok.stderr
    rows = (tmp_path / "d" / "summary.csv").read_text().splitlines()
    head = rows[0].split(",")
    assert len(rows) == 3 and float(rows[2].split(",")[head.index("lr")]) == pytest.approx(1e-4)
