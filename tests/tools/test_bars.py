"""tools/gpu/bars.py: the bar verdicts from synthetic rows, from a CPU run of the gpu preset and from
the committed H200 run; every bar cell is among the gpu preset's jobs."""
import math

import pytest

from vimd_kernels.bench import kernels
from tests.bench.test_gpu_preset import gpu_jobs, job_key
from tools.gpu import bars
from tools.gpu.runs import H200_RUN


def _row(op, shape, dtype, mode, provider, ms=math.nan, pct_copy=math.nan, note=""):
    return dict(op=op, shape=shape, dtype=dtype, mode=mode, provider=provider, ms=ms, pct_copy=pct_copy,
                note=note)


BAR = bars.Bar("x", "selective_scan", ("vim-ti-s16", "vim-s-s16"), ("fwd+bwd",), ("float32", "bfloat16"),
               "mamba_ssm", 1.5)


def _bar_rows(speedup):
    rows = []
    for shape in BAR.shapes:
        for dtype in BAR.dtypes:
            rows.append(_row(BAR.op, shape, dtype, "fwd+bwd", "cuda", ms=1.0))
            rows.append(_row(BAR.op, shape, dtype, "fwd+bwd", "mamba_ssm", ms=speedup))
    return rows


def test_verdict_pass_at_1_6x():
    (v,) = bars.bar_verdicts(_bar_rows(1.6), [BAR])
    assert v["status"] == "PASS" and v["min"] == pytest.approx(1.6)
    assert v["line"].startswith("(x) PASS: selective_scan fwd+bwd cuda vs mamba_ssm >= 1.50x | min 1.60x [")
    assert "vim-s-s16/bfloat16 1.60x" in v["line"]


def test_verdict_fail_at_1_4x_names_the_cell():
    rows = _bar_rows(1.6)
    rows[-1]["ms"] = 1.4  # mamba_ssm at vim-s-s16 bfloat16
    (v,) = bars.bar_verdicts(rows, [BAR])
    assert v["status"] == "FAIL" and v["min"] == pytest.approx(1.4)
    assert "below the bar: vim-s-s16/bfloat16" in v["line"]


def test_verdict_missing_peer_is_not_measured():
    rows = [r for r in _bar_rows(1.6) if not (r["provider"] == "mamba_ssm" and r["dtype"] == "bfloat16")]
    (v,) = bars.bar_verdicts(rows, [BAR])
    assert v["status"] == "NOT MEASURED"
    assert v["missing"] == {"vim-ti-s16/bfloat16": "mamba_ssm not run", "vim-s-s16/bfloat16": "mamba_ssm not run"}
    assert "not measured (2 of 4 cells): mamba_ssm not run [vim-ti-s16/bfloat16, vim-s-s16/bfloat16]" in v["line"]
    # an untimed peer row gives its note as the reason; a failing cell still makes it FAIL
    rows = _bar_rows(1.6)
    for r in rows:
        if r["provider"] == "mamba_ssm":
            r.update(ms=math.nan, note="not installed (selective_scan_cuda)")
    (v,) = bars.bar_verdicts(rows, [BAR])
    assert v["status"] == "NOT MEASURED" and v["min"] is None
    assert "mamba_ssm: not installed (selective_scan_cuda) [" in v["line"]
    rows[1].update(ms=1.2, note="")
    assert bars.bar_verdicts(rows, [BAR])[0]["status"] == "FAIL"


def test_bandwidth_bar():
    bar = bars.Bar("d", "selective_scan", ("vim-ti-s16",), ("fwd",), ("float32",), "mamba_ssm", 0.70,
                   metric="pct_copy")
    line = lambda pct: bars.bar_verdicts(  # noqa: E731
        [_row("selective_scan", "vim-ti-s16", "float32", "fwd", "cuda", ms=1.0, pct_copy=pct)], [bar])[0]
    assert line(75.0)["status"] == "PASS" and "min 75% [vim-ti-s16/float32 75%]" in line(75.0)["line"]
    assert line(65.0)["status"] == "FAIL"
    assert line(math.nan)["status"] == "NOT MEASURED" and "no copy bandwidth" in line(math.nan)["line"]


def test_gpu_jobs_cover_every_bar_cell():
    keys = {job_key(j) for j in gpu_jobs()}
    for bar in bars.GPU_BARS:
        for shape in bar.shapes:
            for dtype in bar.dtypes:
                for mode in bar.modes:
                    for provider in (bar.ours, bar.peer, "triton"):
                        assert (bar.op, shape, dtype, mode, provider) in keys


def test_gpu_bars_pass_on_rows_of_the_gpu_jobs():
    """Every GPU bar is judged from the gpu preset's job list alone: rows where our backends beat
    every peer 10x at 95% of copy bandwidth pass all eight (CUDA's five, Triton's three)."""
    rows = [_row(*job_key(j), ms=1.0 if j.provider in kernels.OURS else 10.0, pct_copy=95.0) for j in gpu_jobs()]
    verdicts = bars.bar_verdicts(rows)
    assert [v["bar"] for v in verdicts] == ["a", "b", "c", "d", "e", "t1", "t2", "t3"]
    assert all(v["status"] == "PASS" for v in verdicts), [v["line"] for v in verdicts]
    assert [len(v["values"]) for v in verdicts] == [8, 4, 1, 5, 8, 2, 4, 4]


def test_gpu_preset_on_cpu_is_not_measured(tmp_path, capsys):
    kernels.main(["--preset", "gpu", "--device", "cpu", "--providers", "cuda", "mamba_ssm",
                  "mamba_ssm_composed", "causal_conv1d", "--out", str(tmp_path), "--no-plot"])
    capsys.readouterr()
    verdicts = bars.main([str(tmp_path / "kernels-gpu.csv")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# GPU perf bars")
    assert [line.split(")")[0] for line in out[1:]] == ["#   (a", "#   (b", "#   (c", "#   (d", "#   (e",
                                                        "#   (t1", "#   (t2", "#   (t3"]
    assert [v["status"] for v in verdicts] == ["NOT MEASURED"] * 8
    assert all("cuda: runs on cuda only" in line for line in out[1:6])


def test_the_committed_h200_run():
    """The verdicts of the committed run, and the minima benchmarks/results/nvidia-h200/README.md quotes."""
    verdicts = bars.main([H200_RUN])
    assert [v["status"] for v in verdicts] == ["FAIL"] * 8
    assert [round(v["min"], 2) for v in verdicts] == [0.74, 1.14, 2.14, 0.07, 0.46, 0.19, 0.30, 0.37]


def test_cli_rejects_a_missing_file():
    with pytest.raises(SystemExit, match="no file"):
        bars.main(["/nonexistent/run.csv"])
