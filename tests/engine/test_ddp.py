"""torchrun with 2 CPU processes (gloo): DDP with batch 4 per process trains the same weights as one
process with batch 8 (the two ranks' shards of each step are exactly that step's 8 samples)."""
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["train", os.path.join(ROOT, "configs", "demo_teacher.yaml"), "backend=ref", "seed=1",
        "model.kwargs={embed_dim: 16, depth: 1, d_state: 4, patch_size: 8, stride: 8, img_size: 32}",
        "data.img_size=32", "data.train_size=32", "data.val_size=12", "data.num_classes=4", "train.epochs=1",
        "train.progress=false", "optim.lr=0.01", "train.ckpt_every=2", "train.device=cpu"]  # gloo, 2 processes


def test_ddp_gloo_two_processes_matches_single(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "vimd_models.cli", *ARGS, "data.batch_size=8",
                             f"output_dir={tmp_path}", "name=single"], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "vimd_models.cli", *ARGS, "data.batch_size=4", f"output_dir={tmp_path}", "name=ddp"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = load_file(str(tmp_path / "single" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    rows_a = (tmp_path / "single" / "summary.csv").read_text().splitlines()
    rows_b = (tmp_path / "ddp" / "summary.csv").read_text().splitlines()
    head = rows_a[0].split(",")
    i = head.index("val_top1")
    assert rows_a[1].split(",")[i] == rows_b[1].split(",")[i]  # evaluation sharded then reduced
