"""A run killed with SIGKILL mid-epoch (or mid-schedule in an iteration-counted run) and resumed ends
with the same weights as an uninterrupted run."""
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COMMON = ["task=classify", "model.name=vim_micro", "model.kwargs={drop_path_rate: 0.1}", "data.img_size=32",
          "data.lr_size=8", "data.train_size=48", "data.val_size=16", "data.batch_size=8", "train.epochs=2",
          "train.ckpt_every=2", "train.ema=0.9", "train.progress=false", "optim.lr=0.003", "seed=3",
          "backend=ref", "train.device=cpu"]  # bitwise comparison: CPU arithmetic


TRAIN = ["-m", "vimd_models.cli", "train"]


def _run(out, *extra, cmd=TRAIN):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *cmd, os.path.join(ROOT, "configs", "demo_teacher.yaml"), *COMMON,
                           f"output_dir={out}", *extra], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_sigkill_mid_epoch_then_resume_matches(tmp_path):
    ref = _run(tmp_path / "a", "name=run")
    assert ref.returncode == 0, ref.stderr
    # 6 steps per epoch: die at global step 9 (mid epoch 2; the last checkpoint is from step 8)
    killed = _run(tmp_path / "b", "name=run", cmd=["-m", "tests.engine.killed_run", "9"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not os.path.exists(tmp_path / "b" / "run" / "model.safetensors")
    resumed = _run(tmp_path / "b", "name=run", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _same_weights(tmp_path / "a" / "run", tmp_path / "b" / "run")
    rows_a = (tmp_path / "a" / "run" / "summary.csv").read_text().splitlines()
    rows_b = (tmp_path / "b" / "run" / "summary.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 3
    assert _strip(rows_a) == _strip(rows_b)


def _strip(rows):
    """summary.csv rows without the timings (everything else matches)."""
    head = rows[0].split(",")
    keep = [i for i, h in enumerate(head) if h not in ("images_per_s", "train_time_s")]
    return [[r.split(",")[i] for i in keep] for r in rows]


def _same_weights(a_dir, b_dir):
    for f in ("model.safetensors", "best.safetensors"):
        a, b = load_file(a_dir / f), load_file(b_dir / f)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{f}: {k} differs after resume"


# 6 steps per data epoch; 11 iterations: rows (evaluation + checkpoint) at steps 4, 8, 11, checkpoints
# at 3, 6 (the data epoch's end) and 9; the learning rate halves after iterations 5 and 9
ITERS = ["train.iterations=11", "train.eval_every=4", "train.ckpt_every=3", "sched.name=step",
         "sched.warmup_epochs=0", "sched.milestones=[5, 9]"]


def test_iteration_run_killed_twice_then_resumed_matches(tmp_path):
    ref = _run(tmp_path / "a", "name=run", *ITERS)
    assert ref.returncode == 0, ref.stderr
    rows = (tmp_path / "a" / "run" / "summary.csv").read_text().splitlines()
    head = rows[0].split(",")
    assert [r.split(",")[head.index("step")] for r in rows[1:]] == ["4", "8", "11"]
    assert [r.split(",")[head.index("epoch")] for r in rows[1:]] == ["0.6667", "1.3333", "1.8333"]
    assert [float(r.split(",")[head.index("lr")]) for r in rows[1:]] == pytest.approx([0.003, 0.0015, 0.00075])
    assert all(r.split(",")[head.index("val_top1")] for r in rows[1:])
    # die at step 7 (restart from the checkpoint at the data epoch's end, step 6), then at step 10
    # (restart mid data epoch from step 9)
    for step, extra in (("7", ()), ("10", ("--resume",))):
        killed = _run(tmp_path / "b", "name=run", *ITERS, *extra, cmd=["-m", "tests.engine.killed_run", step])
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _run(tmp_path / "b", "name=run", *ITERS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _same_weights(tmp_path / "a" / "run", tmp_path / "b" / "run")
    assert _strip(rows) == _strip((tmp_path / "b" / "run" / "summary.csv").read_text().splitlines())
