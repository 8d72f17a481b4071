"""``vimd table``: the paper tables' specs load, and fake run folders fill them."""
import csv
import io
import os

import pytest
import yaml

from vimd_models import tables
from vimd_models.cli import main
from vimd_models.engine.config import load_config
from vimd_models.engine.logging import write_summary
from vimd_models.errors import UserError


def _run(root, name, rows, finished=True):
    folder = root / name
    folder.mkdir(parents=True)
    write_summary(rows, str(folder / "summary.csv"))
    if finished:
        (folder / "model.safetensors").write_bytes(b"")


def _cls_rows(top1s):
    return [{"epoch": i + 1, "step": 10 * (i + 1), "lr": 1e-5, "images_per_s": 50.0, "train_time_s": 2.0,
             "train_loss": 1.0, "train_ce": 1.0, "val_top1": t, "val_top5": 95.0} for i, t in enumerate(top1s)]


def _csv_rows(text):
    return {(r["row"], r["column"]): r for r in csv.DictReader(io.StringIO(text))}


@pytest.mark.parametrize("name", list(tables.TABLES))
def test_every_cell_config_loads_with_its_overrides(name):
    for cell in tables.cells(tables.TABLES[name]):
        cfg = load_config(cell.config, cell.overrides)
        for ov in cell.overrides:
            key, value = ov.split("=", 1)
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert node == yaml.safe_load(value), (cell, ov)


def test_each_run_name_is_one_experiment():
    """Cells share a run folder only when they are the same config with the same overrides."""
    seen = {}
    for t in tables.TABLES.values():
        for cell in tables.cells(t):
            folder = tables.run_dir(cell, "R")
            seen.setdefault(folder, set()).add((cell.config, tuple(o for o in cell.overrides if "test_sets" not in o)))
    assert all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}
    assert tables.run_dir(tables.VIMD_BETA.rows[0][1][0], "R") == os.path.join("R", "vimd_cub_beta1")
    assert tables.run_dir(tables.VIMD.rows[0][1][3], "R") == os.path.join("R", "vimd_cub")  # beta 20: the preset's run


def test_vimd_table_values_differences_missing_and_unfinished(tmp_path):
    _run(tmp_path, "vimd_cub", _cls_rows([70.0, 80.5, 79.0]))
    _run(tmp_path, "srvm_cub_ce", _cls_rows([60.0, 77.0]), finished=False)
    _run(tmp_path, "vimd_cub_ld", _cls_rows([81.0]))
    res = tables.gather(tables.VIMD, str(tmp_path))
    md = tables.render_markdown(tables.VIMD, res)
    row = next(line for line in md.splitlines() if line.startswith("| CUB-200-2011 |"))
    assert row == "| CUB-200-2011 | - (84.47) | 77.00* (77.98, -0.98) | 81.00 (79.96, +1.04) | 80.50 (80.08, +0.42) |"
    assert "| Oxford Flowers-102 | - | - | - | - |" in md
    runs = md.split("```")[1].strip().splitlines()
    assert runs[0] == f"vimd train hrvm_cub output_dir={tmp_path}"
    assert runs[1] == f"vimd train srvm_cub_ce output_dir={tmp_path} --resume"
    assert not any(r.startswith("vimd train vimd_cub ") and "name=" not in r for r in runs)
    assert f"vimd train vimd_dogs distill.beta=0 name=vimd_dogs_ld output_dir={tmp_path}" in runs
    rows = _csv_rows(tables.render_csv(tables.VIMD, res))
    cub = rows[("CUB-200-2011", "+ L_HSD + L_LD (ViMD)")]
    assert (cub["ours"], cub["paper"], cub["diff"], cub["finished"]) == ("80.5", "80.08", "0.42", "1")
    assert cub["run_dir"] == str(tmp_path / "vimd_cub")
    missing = rows[("CUB-200-2011", "HRVM-Net (HR teacher)")]
    assert (missing["ours"], missing["paper"], missing["diff"], missing["finished"]) == ("", "84.47", "", "0")
    assert rows[("CUB-200-2011", "+ L_LD")]["overrides"] == "distill.beta=0 name=vimd_cub_ld"


def test_sr_cells_read_each_test_set_at_the_best_row(tmp_path):
    def row(step, set5, ntire):
        return {"epoch": 0.5, "step": step, "lr": 2e-4, "train_loss": 0.03, "val_psnr": set5, "val_ssim": 0.9,
                "val_Set5/psnr": set5, "val_Set5/ssim": 0.9, "val_DIV2K_LSDIR_valid/psnr": ntire,
                "val_DIV2K_LSDIR_valid/ssim": 0.8123}
    _run(tmp_path, "dvmsr_kd_div2k", [row(5000, 32.0, 27.1), row(10000, 31.5, 27.3)])
    res = tables.gather(tables.DVMSR, str(tmp_path))
    md = tables.render_markdown(tables.DVMSR, res)
    lines = md.splitlines()
    assert "| DVMSR x4, distilled PSNR (dB) | 32.00 | - | - | - | - | 27.10 (26.93, +0.17) |" in lines
    assert "| DVMSR x4, distilled SSIM | 0.9000 | - | - | - | - | 0.8123 |" in lines
    rows = _csv_rows(tables.render_csv(tables.DVMSR, res))
    ntire = rows[("DVMSR x4, distilled PSNR (dB)", "NTIRE 2024 valid")]
    assert (ntire["metric"], ntire["ours"], ntire["diff"]) == ("val_DIV2K_LSDIR_valid/psnr", "27.1", "0.17")
    cmds = md.split("```")[1]
    assert "vimd train dvmsr_teacher_div2k 'data.test_sets=[data/SR/Set5," in cmds
    assert "dvmsr_kd_div2k" not in cmds  # finished: its missing test sets are named instead
    assert f"- {tmp_path / 'dvmsr_kd_div2k'} has no val_Set14/psnr, val_B100/psnr, " in md


def test_read_metric_without_an_evaluated_row(tmp_path):
    _run(tmp_path, "r", [{"epoch": 1, "step": 10, "val_top1": ""}, {"epoch": 2, "step": 20, "val_top1": ""}])
    assert tables.read_metric(str(tmp_path / "r"), tables.TOP1) is None
    assert tables.read_metric(str(tmp_path / "none"), tables.TOP1) is None


def test_cli_lists_tables_and_writes_markdown_and_csv(tmp_path, capsys):
    assert main(["table"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(tables.TABLES)
    _run(tmp_path / "runs", "dfkd_cub", _cls_rows([50.0, 57.93]))
    out = tmp_path / "out" / "dfkd"
    assert main(["table", "dfkd", "--runs", str(tmp_path / "runs"), "-o", str(out)]) == 0
    md = capsys.readouterr().out
    assert "| CUB-200-2011 | - (76.87) | - (51.34) | 57.93 (56.93, +1.00) |" in md
    assert (tmp_path / "out" / "dfkd.md").read_text() == md
    rows = _csv_rows((tmp_path / "out" / "dfkd.csv").read_text())
    assert len(rows) == 9 and rows[("CUB-200-2011", "DFKD-FGVC")]["diff"] == "1"
    assert "distill.dfkd.sam_lambda=0 distill.dfkd.w_mhad=0 distill.dfkd.w_sfcl=0 name=dfkd_cub_baseline" in md
    assert main(["table", "nope"]) == 2
    assert "unknown table 'nope'; tables: vimd, vimd_beta, dvmsr, dfkd" in capsys.readouterr().err
    with pytest.raises(UserError):
        tables.get_table("nope")
