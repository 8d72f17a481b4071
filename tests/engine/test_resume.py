"""A run killed with SIGKILL mid-epoch and resumed ends with the same weights as an uninterrupted run."""
import os
import signal
import subprocess
import sys

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
    for f in ("model.safetensors", "best.safetensors"):
        a, b = load_file(tmp_path / "a" / "run" / f), load_file(tmp_path / "b" / "run" / f)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{f}: {k} differs after resume"
    rows_a = (tmp_path / "a" / "run" / "summary.csv").read_text().splitlines()
    rows_b = (tmp_path / "b" / "run" / "summary.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 3
    # everything but timings matches
    def strip(rows):
        head = rows[0].split(",")
        keep = [i for i, h in enumerate(head) if h not in ("images_per_s", "train_time_s")]
        return [[r.split(",")[i] for i in keep] for r in rows]
    assert strip(rows_a) == strip(rows_b)
