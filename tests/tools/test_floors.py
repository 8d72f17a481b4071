"""tools.gpu.floors: the two ceilings' times, checked by hand on the bar shapes and the committed run."""
import pytest

from vimd_kernels.bench import shapes
from tools.gpu import floors
from tools.gpu.runs import H200_RUN


def test_exp2_count_is_one_per_row_step_state_and_pass():
    w = shapes.get("vim-ti-s16")
    fwd = 128 * 384 * 197 * 16
    assert floors.exp2_count("selective_scan", w, 128, "fwd") == fwd
    assert floors.exp2_count("selective_scan", w, 128, "fwd+bwd") == 2 * fwd
    assert floors.exp2_count("bimamba_inner", w, 128, "fwd") == 2 * fwd       # two directions
    assert floors.exp2_count("mamba_inner", w, 128, "fwd+bwd") == 2 * fwd
    assert floors.exp2_count("causal_conv1d", w, 128, "fwd+bwd") == 0


def test_floor_is_the_larger_ceiling_and_names_it():
    w = shapes.get("vim-ti-s16")
    # vim-ti-s16 fp32 forward: u, delta, z read and out written (4 x 128*384*197 floats), B and C
    # (2 x 128*16*197), A, D, delta_bias: 158,182,400 bytes; 154,927,104 exp2.
    slow_copy = floors.Rates(copy_bw=1e11, sms=100, sm_clock_hz=1e9)       # 1.6e12 ex2/s
    f = floors.floor("selective_scan", w, 128, "float32", "fwd", slow_copy)
    assert f["bytes_s"] == pytest.approx(158_182_400 / 1e11)
    assert f["exp2_s"] == pytest.approx(154_927_104 / 1.6e12)
    assert f["bound"] == "bytes" and f["floor_s"] == f["bytes_s"]
    slow_sfu = floors.Rates(copy_bw=1e13, sms=10, sm_clock_hz=1e9)
    f = floors.floor("selective_scan", w, 128, "bfloat16", "fwd", slow_sfu)
    assert f["bound"] == "exp2" and f["floor_s"] == pytest.approx(154_927_104 / 1.6e11)


def test_published_clocks_match_the_longest_name():
    assert floors.published_sm_clock_mhz("NVIDIA H200") == 1980
    assert floors.published_sm_clock_mhz("NVIDIA H100 80GB HBM3") == 1980
    assert floors.published_sm_clock_mhz("NVIDIA H100 PCIe") == 1755
    assert floors.published_sm_clock_mhz("AMD EPYC 7B13") is None


def test_rates_need_a_gpu_run():
    with pytest.raises(ValueError, match="copy bandwidth"):
        floors.rates_of({"device": "AMD EPYC", "copy_gbps": "None"})
    with pytest.raises(ValueError, match="copy bandwidth"):       # a CPU run's live metadata
        floors.rates_of({"device": "AMD EPYC", "copy_gbps": None})
    with pytest.raises(ValueError, match="--sm-clock-mhz"):
        floors.rates_of({"device": "Some GPU", "copy_gbps": "1000", "sm_count": "10"})
    r = floors.rates_of({"device": "Some GPU", "copy_gbps": "1000", "sm_count": "10"}, sm_clock_mhz=1000)
    assert r.ex2_per_s == 10 * 16 * 1e9 and r.copy_bw == 1e12


def test_cli_on_the_committed_h200_run(capsys):
    lines = floors.main([H200_RUN])
    by = {(x["op"], x["shape"], x["dtype"], x["mode"]): x for x in lines}
    fwd = by[("selective_scan", "vim-ti-s16", "float32", "fwd")]
    # copy 4122.17 GB/s measured in that run; 132 SMs x 16 x 1980 MHz
    assert fwd["bytes_us"] == pytest.approx(158_182_400 / 4122.166304354399e9 * 1e6)
    assert fwd["exp2_us"] == pytest.approx(154_927_104 / (132 * 16 * 1.98e9) * 1e6)
    assert fwd["gap"] == pytest.approx(fwd["ms"] * 1e3 / fwd["bytes_us"])
    assert fwd["max_pct_copy"] == pytest.approx(100)
    # the SR shape: a forward that runs every exp2 twice (split L) cannot pass 54% of copy
    sr = by[("selective_scan", "dvmsr-256", "float32", "fwd")]
    assert sr["split_pct_copy"] == pytest.approx(100 * sr["bytes_us"] / (2 * sr["exp2_us"]))
    assert sr["split_pct_copy"] < 70
    assert by[("causal_conv1d", "vim-s-s8", "float32", "fwd")]["exp2_us"] == 0
    out = capsys.readouterr().out
    assert "4122 GB/s" in out and "4.18 T/s" in out and "time/floor" in out


def test_cli_rejects_a_missing_file():
    with pytest.raises(SystemExit, match="no file"):
        floors.main(["/nonexistent/run.csv"])


def test_cli_names_what_a_cpu_run_lacks(tmp_path):
    run = tmp_path / "cpu.csv"
    run.write_text("# device: AMD EPYC\n# copy_gbps: None\nop,shape,batch,dtype,mode,provider,ms\n")
    with pytest.raises(SystemExit, match="cpu.csv: the run records no copy bandwidth"):
        floors.main([str(run)])
