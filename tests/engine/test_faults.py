"""Faults a cluster inflicts, injected (tests/engine/faults.py): a scheduler's stop signal, a NaN
on one process, a killed worker under torchrun --max-restarts. Every process stops at the same step
(no rank left waiting in an all-reduce: the timeouts fail the test), and the resumed or restarted
run ends with the weights of an uninterrupted one, bit for bit."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from vimd_models.checkpoint import load_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = [os.path.join(ROOT, "configs", "demo_teacher.yaml"), "backend=ref", "seed=1",
        "model.kwargs={embed_dim: 16, depth: 1, d_state: 4, patch_size: 8, stride: 8, img_size: 32}",
        "data.img_size=32", "data.train_size=32", "data.val_size=12", "data.num_classes=4", "train.epochs=2",
        "train.progress=false", "optim.lr=0.01", "train.ckpt_every=2", "train.device=cpu", "data.batch_size=4"]
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _run(cmd, out, name, *extra, timeout=240):
    return subprocess.run([*cmd, *ARGS, f"output_dir={out}", f"name={name}", *extra], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, start_new_session=True)


def _fault(fault, step=3):
    return [sys.executable, "-m", "tests.engine.faults", fault, str(step)]


def _same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    one = _run([sys.executable, "-m", "vimd_models.cli", "train"], out, "one")
    two = _run([*TORCHRUN, "-m", "vimd_models.cli", "train"], out, "two")
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-3000:]
    return out


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_stop_signal_checkpoints_exits_75_and_resumes_exactly(sig, tmp_path, uninterrupted):
    r = _run(_fault(sig), tmp_path, "one")
    assert r.returncode == 75, r.stderr[-3000:]
    assert f"vimd: stopped by {sig} after step 4; " in r.stderr and "--resume" in r.stderr
    assert load_state(str(tmp_path / "one" / "checkpoint.safetensors"))[0]["pos"]["global_step"] == 4
    # SIGTERM: continued by hand; SIGUSR1: as SLURM requeues the job (no flag)
    again = subprocess.run([sys.executable, "-m", "vimd_models.cli", "train", *ARGS, f"output_dir={tmp_path}",
                            "name=one", *(["--resume"] if sig == "SIGTERM" else [])], cwd=ROOT, capture_output=True,
                           text=True, timeout=240, env=dict(ENV, SLURM_RESTART_COUNT="0" if sig == "SIGTERM" else "1"))
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-3000:]
    _same_weights(tmp_path / "one", uninterrupted / "one")


def test_stop_signal_to_the_process_group_spares_the_loader_workers(tmp_path):
    r = _run(_fault("group-SIGUSR1"), tmp_path, "w", "data.num_workers=1")
    assert r.returncode == 75 and "vimd: stopped by SIGUSR1 after step 4;" in r.stderr, r.stderr[-3000:]


def test_stop_signal_to_one_process_stops_both(tmp_path, uninterrupted):
    r = _run([*TORCHRUN, *_fault("SIGUSR1")[1:]], tmp_path, "two")
    assert r.returncode != 0
    assert r.stderr.count("vimd: stopped by SIGUSR1 after step 4;") == 2, r.stderr[-3000:]
    again = _run([*TORCHRUN, "-m", "vimd_models.cli", "train"], tmp_path, "two", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    _same_weights(tmp_path / "two", uninterrupted / "two")


def test_nan_on_one_process_stops_every_process_with_one_line(tmp_path):
    r = _run([*TORCHRUN, *_fault("nan")[1:]], tmp_path, "nan", "task=classify_nan", timeout=120)
    # both processes raise the same error at the same step; torchrun ends a process that has not
    # printed it yet once the other has exited, so one or two lines, identical
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("vimd: error:")]
    assert r.returncode != 0 and len(lines) in (1, 2) and len(set(lines)) == 1, r.stderr[-3000:]
    assert "loss term 'ce' is nan on process 1 at step 3" in lines[0] and "checkpoint of step 2 is kept" in lines[0]


def test_killed_worker_restarted_by_torchrun_resumes_exactly(tmp_path, uninterrupted):
    r = _run([*TORCHRUN, "--max-restarts=1", *_fault("kill")[1:]], tmp_path, "two")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "step 2" in r.stdout
    _same_weights(tmp_path / "two", uninterrupted / "two")


def test_a_checkpoint_write_that_fails_keeps_the_previous_one(tmp_path):
    r = _run(_fault("disk-full", 2), tmp_path, "full")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"vimd: error: cannot write checkpoint {tmp_path}/full/checkpoint.safetensors at step 4 (")
    assert "the checkpoint of step 2 is kept" in lines[0]
    state, _ = load_state(str(tmp_path / "full" / "checkpoint.safetensors"))
    assert state["pos"]["global_step"] == 2
    assert not [f for f in os.listdir(tmp_path / "full") if f.startswith(".tmp-")]


def test_a_killed_loader_worker_is_one_line(tmp_path):
    r = _run(_fault("kill-worker"), tmp_path, "w", "data.num_workers=1", timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("vimd: error: a data-loader worker stopped at step 4 (") and "--resume" in lines[0]
