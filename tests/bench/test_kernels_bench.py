"""The kernel benchmark harness runs end to end (--quick) and its mambapy peer computes our scan."""
import json
import math
import os

import pytest
import torch

from vimd_kernels.bench import kernels
from vimd_kernels.bench.shapes import WORKLOADS
from vimd_kernels import selective_scan_ref


@pytest.mark.parametrize("shape", ["tiny", "tiny-grouped"])
def test_mambapy_peer_is_the_same_scan(shape):
    pytest.importorskip("mambapy")
    x = kernels.scan_inputs(WORKLOADS[shape], 2, torch.float32, "cpu")
    a = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    b = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    out = kernels._call_scan(kernels._mambapy_scan, a)
    ref = kernels._call_scan(selective_scan_ref, b)
    torch.testing.assert_close(out, ref, rtol=6e-4, atol=2e-3)
    dout = torch.randn(out.shape)
    (out * dout).sum().backward()
    (ref * dout).sum().backward()
    for k in x:
        torch.testing.assert_close(a[k].grad, b[k].grad, rtol=6e-4, atol=2e-3, msg=lambda m: f"d{k}: {m}")


def test_quick_run_writes_table_csv_json_png(tmp_path, capsys):
    rows = kernels.main(["--quick", "--ops", "selective_scan,causal_conv1d", "--providers",
                         "ref", "mambapy", "cpu", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "provider" in printed and "selective_scan" in printed
    timed = [r for r in rows if not math.isnan(r["ms"])]
    assert {(r["op"], r["provider"]) for r in timed} >= {("selective_scan", "ref"), ("causal_conv1d", "ref")}
    for r in timed:
        assert r["ms"] > 0 and r["gbps"] > 0 and r["peak_mb"] > 0
    # rows a provider cannot run say why instead of vanishing
    assert all(r["note"] for r in rows if math.isnan(r["ms"]))
    for ext in ("csv", "json", "png"):
        assert os.path.getsize(tmp_path / f"kernels-quick.{ext}") > 0
    data = json.loads((tmp_path / "kernels-quick.json").read_text())
    for key in ("device", "torch", "triton", "git_sha", "date"):
        assert key in data["meta"]
    if any(r["provider"] == "mambapy" for r in timed):
        scan_ref = next(r for r in timed if r["op"] == "selective_scan" and r["provider"] == "ref"
                        and r["mode"] == "fwd")
        assert "speedup_vs_mambapy" in scan_ref
    # the run ends with the providers that were not timed everywhere, one line each
    closing = printed[printed.index("# skipped providers:"):].splitlines()
    assert closing == kernels.skipped_providers(rows)
    assert next(r for r in rows if r["op"] == "causal_conv1d" and r["provider"] == "mambapy")["note"] == \
        "mambapy has no causal_conv1d"
    mambapy = [line for line in closing if line.startswith("#   mambapy: ")]  # its conv jobs are not counted
    assert mambapy in ([], ["#   mambapy: 2 of 2 jobs not timed: not installed: pip install mambapy"]), mambapy


def test_cpu_preset_plumbing(tmp_path, capsys):
    """The cpu preset runs (here at batch 1, quick reps) and prints its speed-up line."""
    kernels.main(["--preset", "cpu", "--quick", "--batch", "1", "--out", str(tmp_path), "--no-plot"])
    out = capsys.readouterr().out
    assert "# cpu backend: selective_scan fwd+bwd, u=(1, 384, 197)" in out
    assert os.path.exists(tmp_path / "kernels-cpu-quick.csv")


def test_size_budget_skips_reference_with_a_note():
    with pytest.raises(kernels.Unsupported, match="budget"):
        kernels.provider_fn("ref", "selective_scan", WORKLOADS["dvmsr-256"], 8, "cpu")


def _row(provider: str, ms: float = math.nan, note: str = "", op: str = "selective_scan") -> dict:
    return dict(op=op, shape="tiny", mode="fwd", dtype="float32", provider=provider, ms=ms, note=note)


def test_skipped_providers_one_line_each_with_counts_and_reasons():
    rows = [_row("cpu", 1.0), _row("mamba_ssm", note="not installed: pip install mamba-ssm"),
            _row("causal_conv1d", note="causal_conv1d has no selective_scan"), _row("ref", 2.0),
            _row("mamba_ssm", note="not installed: pip install mamba-ssm"),
            _row("ref", note="skipped: over the size budget (batch*dim*L*N > 34M)"),
            _row("mambapy", note="mambapy has no causal_conv1d", op="causal_conv1d"),
            _row("mambapy", note="not installed: pip install mambapy"),
            _row("causal_conv1d", note="GPU only", op="causal_conv1d"),
            _row("triton", note="")]
    assert kernels.skipped_providers(rows) == [
        "# skipped providers:",
        "#   mamba_ssm: 2 of 2 jobs not timed: not installed: pip install mamba-ssm",
        "#   ref: 1 of 2 jobs not timed: over the size budget (batch*dim*L*N > 34M)",
        "#   mambapy: 1 of 1 jobs not timed: not installed: pip install mambapy",
        "#   causal_conv1d: 1 of 1 jobs not timed: GPU only",
        "#   triton: 1 of 1 jobs not timed: not timed",
    ]
    assert kernels.skipped_providers(rows[:1]) == ["# skipped providers: none"]


def test_a_missing_peer_names_its_pip_package():
    assert kernels.not_installed(ImportError("No module named 'mamba_ssm'", name="mamba_ssm")) == \
        "not installed: pip install mamba-ssm"
    assert kernels.not_installed(ImportError("No module named 'causal_conv1d'", name="causal_conv1d")) == \
        "not installed: pip install causal-conv1d"
    # the package is there but a module it needs is not (its compiled extension, a dependency)
    assert kernels.not_installed(ImportError("No module named 'selective_scan_cuda'", name="selective_scan_cuda")) \
        == "not importable (selective_scan_cuda)"


def test_load_benchmark_times_alone_and_loaded():
    """python -m vimd_kernels.bench.load: one row per provider with both timings and their ratio,
    the load processes ended afterwards."""
    import re
    import subprocess
    import sys
    from vimd_kernels.bench import load

    rows = load.measure(["ref"], others=1, load="ref", shape="tiny", batch=2, seconds=0.2)
    assert [r["provider"] for r in rows] == ["ref"]
    r = rows[0]
    assert r["alone_ms"] > 0 and r["loaded_ms"] > 0
    assert math.isclose(r["ratio"], r["loaded_ms"] / r["alone_ms"])
    out = subprocess.run([sys.executable, "-m", "vimd_kernels.bench.load", "--others", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--others must be at least 1" in out.stderr
    assert not re.search(r"Traceback", out.stderr)
