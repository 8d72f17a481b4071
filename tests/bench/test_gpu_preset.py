"""The gpu preset on the CPU: the composed mixer peer, the job list and the time guards (with
stand-in peer kernels and fake clocks)."""
import json
import math
import signal
import sys
import time

import pytest
import torch

from vimd_kernels.bench import common, kernels
from vimd_kernels.bench.shapes import WORKLOADS
from vimd_kernels import bimamba_v2_inner_ref, causal_conv1d_ref, mamba_inner_ref, selective_scan_ref


# ----------------------------------------------------------------------------- composed mixer peer

def _stand_in_peers(calls: list):
    """Our reference kernels behind the peers' exact signatures (mamba_ssm 2.3.2.post1's
    selective_scan_fn, causal_conv1d 1.7.0's causal_conv1d_fn), recording how they are called."""
    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        calls.append(("scan", B.dim(), delta_softplus))
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                         final_states_out=None, activation=None):
        assert weight.dim() == 2, "causal_conv1d_fn takes weight (dim, width)"
        calls.append(("conv", activation))
        return causal_conv1d_ref(x, weight, bias, activation)

    return selective_scan_fn, causal_conv1d_fn


@pytest.mark.parametrize("op,ref,call", [("mamba_inner", mamba_inner_ref, kernels._call_mamba),
                                         ("bimamba_inner", bimamba_v2_inner_ref, kernels._call_bimamba)])
def test_composed_mixer_with_ref_kernels_is_the_reference(op, ref, call):
    """mamba_ssm_composed, with our reference kernels injected in place of the peers', computes the
    reference mixer: same output and same gradient for every input."""
    x = kernels.mixer_inputs(WORKLOADS["tiny"], 2, torch.float32, "cpu", op == "bimamba_inner")
    calls = []
    mixer = kernels.composed_mixer(op, *kernels.peer_kernels(*_stand_in_peers(calls)))
    a = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    b = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    out, expected = mixer(a), call(ref, b)
    torch.testing.assert_close(out, expected)
    branches = 2 if op == "bimamba_inner" else 1
    assert sorted(calls) == sorted([("conv", "silu"), ("scan", 3, True)] * branches)
    dout = torch.randn_like(out)
    (out * dout).sum().backward()
    (expected * dout).sum().backward()
    for k in x:
        torch.testing.assert_close(a[k].grad, b[k].grad, msg=lambda m: f"d{k}: {m}")


def test_peer_kernels_refuse_reverse():
    scan, conv = kernels.peer_kernels(*_stand_in_peers([]))
    with pytest.raises(ValueError, match="forward only"):
        conv(torch.zeros(1, 2, 3), torch.zeros(2, 4), None, "silu", reverse=True)


def test_mixer_providers_on_cpu_say_why():
    w = WORKLOADS["tiny"]
    with pytest.raises(kernels.Unsupported, match="GPU only"):
        kernels.provider_fn("mamba_ssm_composed", "bimamba_inner", w, 2, "cpu")
    with pytest.raises(kernels.Unsupported, match="mamba_ssm_composed"):
        kernels.provider_fn("mamba_ssm", "bimamba_inner", w, 2, "cuda")
    with pytest.raises(kernels.Unsupported, match="no selective_scan"):
        kernels.provider_fn("mamba_ssm_composed", "selective_scan", w, 2, "cuda")


def test_import_peer_skips_the_package_init(tmp_path, monkeypatch):
    """mamba_ssm's __init__ imports transformers/huggingface_hub (absent on the GPU machine); the op
    module must import without it."""
    pkg = tmp_path / "fakepeer_pkg"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import transformers_absent_here\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "iface.py").write_text("def selective_scan_fn():\n    return 'scan'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ImportError):
            __import__("fakepeer_pkg.ops.iface")
        assert kernels.import_peer("fakepeer_pkg.ops.iface").selective_scan_fn() == "scan"
        with pytest.raises(ImportError):
            kernels.import_peer("fakepeer_pkg.ops.missing")
    finally:
        for name in [n for n in sys.modules if n.startswith("fakepeer_pkg")]:
            del sys.modules[name]
    with pytest.raises(ImportError) as e:
        kernels.import_peer("no_such_peer_pkg.ops.iface")
    assert e.value.name == "no_such_peer_pkg" and "no_such_peer_pkg" not in sys.modules


# ----------------------------------------------------------------------------- the job list

def gpu_jobs():
    return kernels.build_jobs(kernels.PRESETS["gpu"]["groups"])


def job_key(job):
    return job.op, job.workload.name, kernels._dtype_name(job.dtype), job.mode, job.provider


def test_gpu_jobs_time_cuda_and_peers_first_and_compile_last():
    keys = [job_key(j) for j in gpu_jobs()]
    assert len(keys) == len(set(keys)) == 84
    providers = [k[-1] for k in keys]
    first_slow = providers.index("ref")
    assert set(providers[:first_slow]) == {"cuda", "mamba_ssm", "mamba_ssm_composed", "causal_conv1d"}
    assert providers[first_slow:first_slow + 4] == ["ref", "mambapy"] * 2
    assert set(providers[first_slow + 4:-2]) == {"triton"}
    assert providers[-2:] == ["compiled_ref"] * 2                       # torch.compile last
    # triton runs on exactly the cells cuda runs on
    assert {k[:4] for k in keys if k[-1] == "triton"} == {k[:4] for k in keys if k[-1] == "cuda"}
    slow = [k for k in keys if k[-1] in ("ref", "compiled_ref", "mambapy")]
    assert len(slow) == 6 and {k[:3] for k in slow} == {("selective_scan", "vim-ti-s16", "float32")}
    assert {k[2] for k in keys if k[2] != "float32"} == {"bfloat16"}
    assert {k[0] for k in keys if k[2] == "bfloat16"} == {"selective_scan"}


def test_gpu_dry_run_and_narrowing(capsys):
    assert kernels.main(["--preset", "gpu", "--dry-run"]) == []
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "# 84 jobs on cuda" and out[0] == "selective_scan vim-ti-s16 float32 fwd+bwd cuda"
    kernels.main(["--preset", "gpu", "--dry-run", "--providers", "cuda", "--dtype", "bfloat16"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "# 4 jobs on cuda"
    with pytest.raises(SystemExit):
        kernels.main(["--preset", "gpu", "--dry-run", "--providers", "cpu"])
    with pytest.raises(SystemExit):
        kernels.main(["--dry-run", "--dtype", "float8"])


def test_several_dtypes_without_a_preset():
    a = kernels.parse_args(["--ops", "causal_conv1d", "--shapes", "tiny", "--providers", "ref", "--dtype",
                            "float32", "bfloat16"])
    assert [str(j) for j in kernels.plan(a, "cpu")] == [
        f"causal_conv1d tiny {dt} {m} ref" for dt in ("float32", "bfloat16") for m in ("fwd", "fwd+bwd")]


# ----------------------------------------------------------------------------- time guards

def test_deadline_interrupts_and_restores_the_handler():
    before = signal.getsignal(signal.SIGALRM)
    t0 = time.monotonic()
    with pytest.raises(common.TimeUp):
        with common.deadline(0.1):
            time.sleep(5)
    assert time.monotonic() - t0 < 2
    assert signal.getsignal(signal.SIGALRM) is before
    with common.deadline(math.inf):
        pass
    with pytest.raises(common.TimeUp):
        with common.deadline(0):
            pass


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_run_jobs_records_jobs_past_the_budget_as_skipped(monkeypatch):
    clock = FakeClock()
    budget = common.Budget(total_s=10, job_s=60, clock=clock)
    ran = []

    def fake_run_job(job, device, batch_override, quick, copy_bw, b):
        assert b is budget and b.job_limit() <= 10
        ran.append(job)
        clock.now += 4  # every job takes 4 s
        row = kernels._new_row(job, device, batch_override)
        row["ms"] = 1.0
        return row

    monkeypatch.setattr(kernels, "run_job", fake_run_job)
    jobs = gpu_jobs()[:6]
    rows = kernels.run_jobs(jobs, "cuda", budget=budget)
    assert ran == jobs[:3]  # started at 0, 4 and 8 s
    assert [r["note"] for r in rows[3:]] == ["skipped: over budget (--budget-s 10)"] * 3
    assert [r["provider"] for r in rows] == [j.provider for j in jobs]


def _slow_provider(seconds):
    def provider_fn(provider, op, w, batch, device):
        return lambda x: time.sleep(seconds)
    return provider_fn


def test_a_slow_compile_is_cut_at_the_job_limit(monkeypatch):
    monkeypatch.setattr(kernels, "provider_fn", _slow_provider(30))
    job = kernels.Job("selective_scan", WORKLOADS["tiny"], "fwd", torch.float32, "compiled_ref")
    t0 = time.monotonic()
    row = kernels.run_job(job, "cpu", budget=common.Budget(total_s=100, job_s=0.3))
    assert time.monotonic() - t0 < 10
    assert math.isnan(row["ms"])
    assert row["note"].startswith("skipped: first call (torch.compile) exceeded the 0.3 s job limit")


def test_a_job_running_past_the_run_budget_is_over_budget(monkeypatch):
    monkeypatch.setattr(kernels, "provider_fn", _slow_provider(30))
    job = kernels.Job("selective_scan", WORKLOADS["tiny"], "fwd", torch.float32, "cpu")
    row = kernels.run_job(job, "cpu", budget=common.Budget(total_s=0.3, job_s=60))
    assert row["note"] == "skipped: over budget (--budget-s 0.3) in first call"


def test_budget_limits():
    clock = FakeClock()
    assert common.Budget(clock=clock).job_limit() == math.inf
    b = common.Budget(total_s=100, job_s=30, clock=clock)
    clock.now += 80
    assert b.left() == 20 and b.job_limit() == 20
    clock.now -= 60
    assert b.job_limit() == 30


# ----------------------------------------------------------------------------- a run on the CPU

def test_gpu_preset_on_cpu_records_every_job_with_its_reason(tmp_path, capsys):
    rows = kernels.main(["--preset", "gpu", "--device", "cpu", "--providers", "cuda", "mamba_ssm",
                         "mamba_ssm_composed", "causal_conv1d", "--out", str(tmp_path), "--no-plot"])
    assert len(rows) == 52 and all(r["note"] and math.isnan(r["ms"]) for r in rows)
    assert all(r["note"] == "runs on cuda only" for r in rows if r["provider"] == "cuda")
    out = capsys.readouterr().out
    assert "provider" in out
    assert out.splitlines()[-5:] == [
        "# skipped providers:", "#   cuda: 26 of 26 jobs not timed: runs on cuda only",
        "#   mamba_ssm: 14 of 14 jobs not timed: GPU only",
        "#   mamba_ssm_composed: 4 of 4 jobs not timed: GPU only",
        "#   causal_conv1d: 8 of 8 jobs not timed: GPU only"], out.splitlines()[-5:]
    data = json.loads((tmp_path / "kernels-gpu.json").read_text())
    assert sorted(data) == ["meta", "rows"] and len(data["rows"]) == 52
    assert data["meta"]["summary"] and "peers" in data["meta"]
    assert "# argv: --preset gpu " in (tmp_path / "kernels-gpu.csv").read_text()
