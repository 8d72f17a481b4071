"""tools/gpu/profile_kernels.py on the CPU (ops by self time): job parsing, a profiled job, and
providers that cannot run here reported rather than raised."""
import json

import pytest

from tools.gpu import profile_kernels


def test_parse_job_rejects_bad_specs():
    assert profile_kernels.parse_job("selective_scan:tiny:float32:cpu") == ("selective_scan", "tiny", "float32", "cpu")
    with pytest.raises(SystemExit, match="op:shape:dtype:provider"):
        profile_kernels.parse_job("selective_scan:tiny:cpu")
    with pytest.raises(SystemExit, match="unknown provider"):
        profile_kernels.parse_job("selective_scan:tiny:float32:nope")
    with pytest.raises(ValueError, match="unknown shape"):
        profile_kernels.parse_job("selective_scan:nope:float32:cpu")


def test_profile_on_cpu_lists_ops_and_notes(tmp_path):
    results = profile_kernels.main(["--device", "cpu", "--iters", "2", "--out", str(tmp_path), "--jobs",
                                    "selective_scan:tiny:float32:cpu", "selective_scan:tiny:float32:mamba_ssm"])
    ours, peer = results
    assert not ours["note"] and ours["total_us"] > 0
    assert any("selective_scan" in r["name"] for r in ours["rows"])
    assert abs(sum(r["share"] for r in ours["rows"]) - 1) < 1e-6
    assert peer["note"] == "GPU only" and not peer["rows"]
    saved = json.loads((tmp_path / "profile.json").read_text())
    assert [j["provider"] for j in saved["jobs"]] == ["cpu", "mamba_ssm"]


def test_ncu_mode_runs_each_job_once_and_measures_nothing(tmp_path):
    """--ncu (the Nsight Compute target): warm-up, then one fwd+bwd; on the CPU no profiler range."""
    ours, = profile_kernels.main(["--device", "cpu", "--ncu", "--jobs", "selective_scan:tiny:float32:cpu"])
    assert ours["note"] == "ran once for ncu" and not ours["rows"] and ours["total_us"] == 0.0
