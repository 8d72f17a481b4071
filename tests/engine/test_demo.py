"""The demo: its run table and the README's copy of its results table agree (fast); the ablation
baseline's generator has no attention (fast); the demo end to end at a small scale (slow: a few
minutes on 2 cores)."""
import csv
import os
import re

import pytest

from vimd_models.engine import demo
from vimd_models.engine.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _readme_demo_table() -> tuple[list[str], list[list[str]]]:
    """Header and rows of the first Markdown table in the README's demo section."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index("### The demo")
    end = text.find("\n## ", start)
    section = text[start:end if end >= 0 else None]
    lines = [ln.strip() for ln in section.splitlines()]
    first = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    table = []
    for ln in lines[first:]:
        if not ln.startswith("|"):
            break
        table.append([c.strip() for c in ln.strip("|").split("|")])
    assert re.fullmatch(r"(-+\|?)+", "|".join(table[1]).replace(" ", "")), "second line must be the separator"
    return table[0], table[2:]


def test_readme_table_matches_the_demo_table():
    header, rows = _readme_demo_table()
    assert header == [h for h, _ in demo.COLUMNS]
    assert [r[0].replace("**", "") for r in rows] == [run.label for run in demo.RUNS]
    assert all(len(r) == len(header) for r in rows)


def test_run_table_is_consistent():
    names = [r.name for r in demo.RUNS]
    assert len(set(names)) == len(names) and len({r.label for r in demo.RUNS}) == len(names)
    for i, r in enumerate(demo.RUNS):
        assert os.path.isfile(os.path.join(demo.CONFIG_DIR, r.config + ".yaml"))
        for _, src, _ in r.inputs:  # every input comes from an earlier run
            assert src in names[:i]


def test_ablation_generator_has_no_attention(tmp_path):
    import vimd_models
    from vimd_models.checkpoint import save_weights
    from vimd_models.distill.dfkd import SAM
    from vimd_models.tasks import build_task

    teacher = str(tmp_path / "t.safetensors")
    save_weights(teacher, vimd_models.create_model("resnet_micro").state_dict())
    small = ["backend=ref", "distill.dfkd.nz=8", "distill.dfkd.ngf=4", f"teacher.checkpoint={teacher}"]
    runs = {r.name: r for r in demo.RUNS}
    for name, has_sam in (("dfkd", True), ("dfkd_baseline", False)):
        cfg = load_config(os.path.join(demo.CONFIG_DIR, runs[name].config + ".yaml"), [*runs[name].extra, *small])
        task = build_task(cfg, 10)
        assert any(isinstance(m, SAM) for m in task.generator.modules()) == has_sam
        assert (cfg["distill"]["dfkd"]["w_mhad"] > 0) == has_sam


@pytest.mark.slow
def test_demo_small_scale(tmp_path):
    rows = demo.run_demo(str(tmp_path), scale=0.05, seed=0)
    assert [r["run"] for r in rows] == [r.label for r in demo.RUNS]
    for f in ("results.md", "results.csv", "results.png"):
        assert os.path.isfile(tmp_path / f)
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(demo.RUNS)
    for r in rows:
        assert os.path.isfile(os.path.join(r["run_dir"], "curves.png"))
        assert os.path.isfile(os.path.join(r["run_dir"], "generator.png")) == (r["task"] == "dfkd")
    text = (tmp_path / "results.md").read_text()
    assert "ViMD loss vs CE only" in text and "seed 0" in text and "Data-free students" in text
    assert text.splitlines()[0] == "| " + " | ".join(h for h, _ in demo.COLUMNS) + " |"
