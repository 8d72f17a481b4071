"""`vimd bench kernels|models` run the installed benchmark modules from any folder; without --out the
results go to ./vimd-bench/<device> in the current folder."""
import json

from vimd_kernels.bench import common
from vimd_models import cli


def test_vimd_bench_kernels_writes_into_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "kernels", "--quick", "--device", "cpu", "--ops", "selective_scan", "--modes", "fwd",
                     "--providers", "ref", "mamba_ssm", "--no-plot"]) == 0
    folder = tmp_path / "vimd-bench" / common.slug(common.device_name("cpu"))
    assert (folder / "kernels-quick.csv").is_file() and (folder / "kernels-quick.json").is_file()
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["# skipped providers:", "#   mamba_ssm: 1 of 1 jobs not timed: GPU only"], out[-2:]


def test_vimd_bench_out_names_the_folder(tmp_path, capsys):
    cli.main(["bench", "kernels", "--quick", "--device", "cpu", "--ops", "causal_conv1d", "--modes", "fwd",
              "--providers", "ref", "--no-plot", "--out", str(tmp_path / "{device}" / "run")])
    assert "# skipped providers: none" in capsys.readouterr().out
    assert (tmp_path / common.slug(common.device_name("cpu")) / "run" / "kernels-quick.csv").is_file()


def test_vimd_bench_models_runs_the_installed_module(tmp_path, capsys):
    assert cli.main(["bench", "models", "--quick", "--models", "resnet_micro", "--device", "cpu",
                     "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "models_quick.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["resnet_micro"] and rows[0]["fwd_ms"] > 0
