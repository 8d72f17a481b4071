"""The model-level stages of the one-call GPU check without a GPU: tools/gpu/model_check.py (budgets and
skips, the run checks, the closing summary), the pieces of vimd_models.bench it drives (bfloat16
autocast cases, in-process runs, the budget, the upstream kernels as a backend of the same model,
the speed-up ratios), and the stages inside gpu_check.sh / bar_check.sh (the budget plan, a stage
that does not fit, the CPU rehearsal's summary)."""
import json
import math
import os
import subprocess
import sys
import types

import pytest
import torch

import vimd_models as vm
from tools.gpu import model_check as mc
from tools.gpu.runs import ROOT
from vimd_models import bench

# --------------------------------------------------------------------------- budget and report


def test_a_step_that_does_not_fit_the_budget_is_skipped_with_the_reason(capsys):
    now = [0.0]
    budget = mc.Budget(60, {"demo": 35, "bf16-step": 15}, clock=lambda: now[0])
    rep = mc.Report("train", "cuda")
    now[0] = 30.0
    assert rep.run("demo", budget, lambda: (True, "10 runs")) is None          # 30 s left, needs 35
    now[0] = 40.0
    rep.run("bf16-step", budget, lambda: (True, "finite"))                      # 20 s left, needs 15
    assert rep.steps["demo"]["status"] == "skipped"
    assert rep.steps["demo"]["detail"] == "skipped: 30 s left of the stage's 60 s, needs ~35 s"
    assert rep.steps["bf16-step"]["status"] == "ok" and rep.ok
    out = capsys.readouterr().out
    assert "CHECK train: demo on cuda: skipped -- skipped: 30 s left" in out
    assert "CHECK train: bf16-step on cuda: ok (0 s) -- finite" in out


def test_a_failed_step_is_reported_and_an_unsupported_one_skipped(tmp_path):
    budget = mc.Budget(100, {})
    rep = mc.Report("model-step", "cuda")

    def boom():
        raise RuntimeError("first line\nCUDA error: out of memory")

    def absent():
        raise bench.Unsupported("mamba_ssm: not installed: pip install mamba-ssm")

    rep.run("bench", budget, boom)
    rep.run("peer-check", budget, absent)
    rep.run("other", budget, lambda: (False, "2 of 3 wrong"))
    assert rep.steps["bench"]["status"] == "FAILED"
    assert rep.steps["bench"]["detail"] == "RuntimeError: CUDA error: out of memory"
    assert rep.steps["peer-check"] == dict(status="skipped", seconds=rep.steps["peer-check"]["seconds"],
                                           detail="mamba_ssm: not installed: pip install mamba-ssm")
    assert rep.steps["other"]["status"] == "FAILED" and not rep.ok
    rep.write(str(tmp_path), seconds=1.0)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["ok"] is False and saved["stage"] == "model-step"
    assert set(saved["steps"]) == {"bench", "peer-check", "other"}


# --------------------------------------------------------------------------- a training run's check

@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """One bfloat16-autocast step of ViM micro by `vimd train`, as the train stage makes it on a CPU."""
    work = str(tmp_path_factory.mktemp("work"))
    mc._cli(["train", mc.step_config(mc.SIZES["cpu"], work, "cpu")])
    return os.path.join(work, "vim_micro_bf16")


def test_a_bf16_step_run_passes_its_check(bf16_run):
    ok, detail, extra = mc.check_run(bf16_run, (3, 32, 32), "cpu", "cpu", "bfloat16")
    assert ok, detail
    assert detail.startswith("vim_micro_bf16: cpu/cpu/bfloat16 autocast, train_loss ")
    assert detail.endswith("checkpoint and weights reload")
    assert math.isfinite(extra["metrics"]["train_loss"]) and "task" in extra["checkpoint_keys"]


def test_the_check_names_a_wrong_device_or_dtype_and_a_loss_that_is_not_finite(bf16_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(bf16_run, run)
    ok, detail, _ = mc.check_run(str(run), (3, 32, 32), "cpu", "cuda", "bfloat16")
    assert not ok and "ran on cpu / cpu, not cpu / cuda" in detail
    lines = (run / "summary.csv").read_text().splitlines()
    head = lines[0].split(",")
    row = lines[-1].split(",")
    row[head.index("train_loss")] = "nan"
    (run / "summary.csv").write_text("\n".join(lines[:-1] + [",".join(row)]) + "\n")
    info = json.loads((run / "run_info.json").read_text())
    (run / "run_info.json").write_text(json.dumps(dict(info, dtype="float32")))
    ok, detail, _ = mc.check_run(str(run), (3, 32, 32), "cpu", "cpu", "bfloat16")
    assert not ok and "not finite: train_loss" in detail and "dtype 'float32', not bfloat16 autocast" in detail


# --------------------------------------------------------------------------- the model benchmark's pieces

def test_speedups_are_against_mamba_ssm_else_ref_per_model_and_dtype():
    def row(model, backend, dtype, ms, mb):
        return dict(model=model, label=model.upper(), backend=backend, dtype=dtype, batch=4, train_step_ms=ms,
                    peak_mem_mb=mb)
    rows = [row("vim", "cuda", "float32", 80.0, 1000.0), row("vim", "mamba_ssm", "float32", 100.0, 1250.0),
            row("vim", "triton", "float32", 200.0, 900.0), row("vim", "ref", "float32", 900.0, 3000.0),
            row("vim", "cuda", "bfloat16", 50.0, None), row("vim", "ref", "bfloat16", 500.0, 2000.0),
            row("dvmsr", "cpu", "float32", 10.0, 50.0)]                      # no baseline timed: no ratio
    sp = bench.speedups(rows)
    assert [(s["model"], s["dtype"], s["backend"], s["vs"]) for s in sp] == [
        ("vim", "float32", "cuda", "mamba_ssm"), ("vim", "float32", "triton", "mamba_ssm"),
        ("vim", "bfloat16", "cuda", "ref")]
    assert sp[0]["train_speedup"] == pytest.approx(1.25) and sp[0]["mem_ratio"] == pytest.approx(0.8)
    assert sp[1]["train_speedup"] == pytest.approx(0.5) and sp[2]["mem_ratio"] is None
    assert bench.speedup_line(sp[0]) == ("VIM float32 b=4: training step cuda 80.0 ms vs mamba_ssm 100.0 ms = "
                                         "1.25x; peak memory 1000 vs 1250 MB (0.80x)")
    assert bench.speedup_line(sp[2]) == "VIM bfloat16 b=4: training step cuda 50.0 ms vs ref 500.0 ms = 10.00x"


def test_batch_sizes_for_every_model_or_per_model():
    assert bench.parse_batch(None) == {}
    assert bench.parse_batch("64") == {"*": 64}
    assert bench.parse_batch("vim_tiny_patch16_224=64,dvmsr=16") == {"vim_tiny_patch16_224": 64, "dvmsr": 16}
    with pytest.raises(SystemExit, match="--batch: expected N or MODEL=N"):
        bench.parse_batch("dvmsr=0")


def _stand_in_peer(with_no_out_proj: bool):
    """mamba_ssm's API on vimd's ops (vimd_kernels.compat), with or without the Vim fork's
    mamba_inner_fn_no_out_proj (without it, ViM's mixer is composed of selective_scan_fn and
    causal_conv1d_fn)."""
    from vimd_kernels.compat import selective_scan_interface as msi
    from vimd_kernels.compat.causal_conv1d import causal_conv1d_fn
    if with_no_out_proj:
        return msi, causal_conv1d_fn
    return types.SimpleNamespace(selective_scan_fn=msi.selective_scan_fn, mamba_inner_fn=msi.mamba_inner_fn), \
        causal_conv1d_fn


@pytest.mark.parametrize("with_no_out_proj", [True, False], ids=["vim-fork", "composed"])
@pytest.mark.parametrize("name,shape,mixers", [("vim_micro", (2, 3, 32, 32), 4), ("dvmsr_micro", (1, 3, 16, 16), 2)])
def test_the_same_model_on_the_upstream_ops_computes_what_ours_does(name, shape, mixers, with_no_out_proj):
    """The replacement of the mixers (ViM's bidirectional v2 with its averaged directions, DVMSR's
    unidirectional one) gives the model's outputs and gradients, with a stand-in for the upstream
    kernels (the real ones need a GPU: the model-step stage's peer check runs them there)."""
    import copy
    torch.manual_seed(0)
    ours = vm.create_model(name, backend="cpu")
    peer = copy.deepcopy(ours)
    assert bench.use_mixers(peer, bench.peer_mixers(*_stand_in_peer(with_no_out_proj))) == mixers
    x = torch.rand(*shape)
    ya, yb = ours(x), peer(x)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    ya.pow(2).mean().backward()
    yb.pow(2).mean().backward()
    for (n, pa), pb in zip(ours.named_parameters(), peer.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_layers_without_an_upstream_op_and_a_cpu_device_are_unsupported():
    mixers = bench.peer_mixers(*_stand_in_peer(True))
    with pytest.raises(bench.Unsupported, match="no upstream op for SS2D"):
        bench.use_mixers(vm.create_model("dvmsr_rssb2d_micro"), mixers)
    with pytest.raises(bench.Unsupported, match="the model has no Mamba mixer"):
        bench.use_mixers(vm.create_model("resnet_micro"), mixers)
    with pytest.raises(bench.Unsupported, match="mamba_ssm: GPU only"):
        bench.run_one("vim_micro", {}, (3, 32, 32), 2, "mamba_ssm", "cpu", 0, 1)


def test_in_process_bf16_train_only_cases_with_a_budget(tmp_path, capsys):
    """--in-process --train-only --dtypes float32,bfloat16: one row per backend and dtype, backend by
    backend; the upstream backend on a CPU and the cases after the budget are listed as skipped."""
    assert bench.main(["--quick", "--models", "dvmsr_micro", "--backends", "cpu,mamba_ssm,ref", "--ref-models", "all",
                       "--dtypes", "float32,bfloat16", "--train-only", "--in-process", "--repeats", "1",
                       "--device", "cpu", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "models_quick.json").read_text())
    assert [(r["backend"], r["dtype"]) for r in res["rows"]] == [
        ("cpu", "float32"), ("cpu", "bfloat16"), ("ref", "float32"), ("ref", "bfloat16")]
    assert all(r["fwd_ms"] is None and r["train_step_ms"] > 0 and r["peak_mem_mb"] is None for r in res["rows"])
    assert res["env"]["skipped"] == ["DVMSR micro 16 [mamba_ssm float32]: mamba_ssm: GPU only",
                                     "DVMSR micro 16 [mamba_ssm bfloat16]: mamba_ssm: GPU only"]
    assert [(s["backend"], s["vs"], s["dtype"]) for s in res["env"]["speedups"]] == [
        ("cpu", "ref", "float32"), ("cpu", "ref", "bfloat16")]
    out = capsys.readouterr().out
    assert "DVMSR micro 16 float32 b=2: training step cpu " in out
    assert bench.main(["--quick", "--models", "dvmsr_micro", "--backends", "cpu", "--budget-s", "0", "--in-process",
                       "--device", "cpu", "--out", str(tmp_path / "none")]) == 0
    res = json.loads((tmp_path / "none" / "models_quick.json").read_text())
    assert res["rows"] == [] and res["env"]["skipped"] == ["DVMSR micro 16 [cpu float32]: over budget (--budget-s 0)"]
    assert res["env"]["speedups"] == [] and res["env"]["speedup_lines"] == []


# --------------------------------------------------------------------------- the summary

def test_summary_names_what_ran_failed_or_was_skipped_and_the_ratios(tmp_path):
    (tmp_path / "stages.tsv").write_text(
        "preflight\tran\t12\twhat was carried unpacked and imported\n"
        "test\tran\t41\trc=0 -- 95 passed\n"
        "train\tFAILED\t30\trc=1 on cuda: 1 ok, 1 failed, 0 skipped\n"
        "deploy\tskipped\t-\tonly 20s left of DEADLINE_S=450 (needs ~45s)\n"
        "model-step\tran\t55\trc=0 on cuda: 2 ok, 0 failed, 0 skipped\n")
    (tmp_path / "model-step").mkdir()
    (tmp_path / "model-step" / "result.json").write_text(json.dumps(
        {"steps": {}, "ratio_lines": ["VIM float32 b=64: training step cuda 80.0 ms vs mamba_ssm 100.0 ms = 1.25x"]}))
    lines = mc.summary_lines(str(tmp_path))
    assert lines[0] == "--- stages ---"
    assert lines[3] == "train          FAILED     30s  rc=1 on cuda: 1 ok, 1 failed, 0 skipped"
    assert lines[4] == "deploy         skipped      -  only 20s left of DEADLINE_S=450 (needs ~45s)"
    assert lines[6] == "ran: preflight test model-step; FAILED: train; skipped: deploy"
    assert lines[-2:] == ["--- model-level: training step (forward+backward+SGD), same process ---",
                          "VIM float32 b=64: training step cuda 80.0 ms vs mamba_ssm 100.0 ms = 1.25x"]
    (tmp_path / "model-step" / "result.json").write_text(json.dumps(
        {"steps": {"peer-check": {"status": "skipped", "detail": "mamba_ssm: not installed"}}, "ratio_lines": []}))
    assert mc.summary_lines(str(tmp_path))[-1] == "no ratio: peer-check skipped: mamba_ssm: not installed"
    # killed at its budget during the benchmark: the ratios of the cases timed, from its own file
    (tmp_path / "model-step" / "bench").mkdir()
    (tmp_path / "model-step" / "bench" / "models.json").write_text(json.dumps(
        {"env": {"speedup_lines": ["VIM float32 b=64: training step cuda 80.0 ms vs mamba_ssm 90.0 ms = 1.12x"]},
         "rows": []}))
    assert mc.summary_lines(str(tmp_path))[-1] == \
        "VIM float32 b=64: training step cuda 80.0 ms vs mamba_ssm 90.0 ms = 1.12x"
    os.remove(tmp_path / "model-step" / "result.json")
    os.remove(tmp_path / "model-step" / "bench" / "models.json")
    assert mc.summary_lines(str(tmp_path))[-1] == "not measured (the model-step stage did not run)"


def test_a_stage_noted_twice_keeps_its_last_line(tmp_path):
    (tmp_path / "s.tsv").write_text("build\tskipped\t-\tnot yet\nbuild\tran\t3\tprebuilt\n\n")
    assert mc.read_stages(str(tmp_path / "s.tsv")) == [dict(name="build", status="ran", seconds=3, detail="prebuilt")]


# --------------------------------------------------------------------------- the stages in the scripts

def _bash(script, *args, **env):
    return subprocess.run(["bash", f"tools/gpu/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})


def test_the_stage_budgets_fit_the_deadline():
    r = _bash("bar_check.sh", "plan")
    assert r.returncode == 0, r.stderr
    rows = dict(ln.split()[:2] for ln in r.stdout.splitlines())
    assert list(rows) == ["preflight", "test", "bench", "train", "model-step", "deploy", "versions", "total"]
    assert sum(int(v) for k, v in rows.items() if k != "total") == int(rows["total"]) <= 450
    r = _bash("bar_check.sh", "plan", DEADLINE_S="300")
    assert r.returncode == 2 and "over DEADLINE_S=300" in r.stderr
    r = _bash("bar_check.sh", "plan", STAGES="build test bench")
    assert [ln.split()[0] for ln in r.stdout.splitlines()] == ["preflight", "test", "bench", "total"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stages where no GPU is visible")
def test_a_model_stage_without_time_left_is_skipped_and_listed(tmp_path):
    out = tmp_path / "out"
    r = _bash("gpu_check.sh", OUT=str(out), STAGES="train", PY=sys.executable, DEADLINE_S="30")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert "train: skipped, only" in summary and "(needs ~60s)" in summary
    assert "skipped: train" in summary and "not measured (the model-step stage did not run)" in summary
    assert not (out / "train.log").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal runs where no GPU is visible")
def test_the_dry_run_rehearses_a_model_stage_on_the_cpu_and_prints_the_summary(tmp_path):
    """DRY_RUN with REHEARSE=1: the model-step stage on the CPU at tiny sizes before the stop (rc 4
    here: no peers carried), its verdict lines, the stage table and the ratios (cpu vs ref here) in
    the summary."""
    out = tmp_path / "out"
    r = _bash("gpu_check.sh", OUT=str(out), STAGES="model-step", PY=sys.executable, DRY_RUN="1", REHEARSE="1",
              MODEL_WORK=str(tmp_path / "work"))
    assert r.returncode == 4, r.stdout[-3000:] + r.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert "rehearsal: train model-step deploy on the cpu at tiny sizes (budgets x2)" in summary
    assert "model-step (cpu): rc=0 in " in summary
    assert "  model-step: peer-check on cpu: ok" in summary and "  model-step: bench on cpu: ok" in summary
    assert "before the steps that need a GPU (model-step)" in summary
    assert "ran: model-step; FAILED: preflight" in summary
    assert "ViM micro 32 bfloat16 b=8: training step cpu " in summary and " vs ref " in summary
    assert json.loads((out / "model-step" / "result.json").read_text())["ok"] is True
