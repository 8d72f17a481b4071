"""The demo end to end at a small scale (slow: a few minutes on 2 cores)."""
import csv
import os

import pytest

from vimd_models.engine.demo import run_demo


@pytest.mark.slow
def test_demo_small_scale(tmp_path):
    rows = run_demo(str(tmp_path), scale=0.05, seed=0)
    assert [r["run"] for r in rows][0] == "HRVM teacher (HR 64)" and len(rows) == 6
    for f in ("results.md", "results.csv", "results.png"):
        assert os.path.isfile(tmp_path / f)
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    text = (tmp_path / "results.md").read_text()
    assert "ViMD loss vs CE only" in text and "seed 0" in text
