"""The dataset check before training: every image decoded (or its header read), every bad file in
one error, counts per split and class, and a (path, size, mtime) cache that makes a second check
instant."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vimd_models.data import check
from vimd_models.data.check import check_data, check_files
from vimd_models.engine.config import load_config
from vimd_models.engine.kinds import build_data
from vimd_models.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tree(root, per_class=2):
    """<root>/{train,val}/{a,b}/<i>.png, 12x12 random images."""
    for split in ("train", "val"):
        for c in ("a", "b"):
            os.makedirs(root / split / c)
            for i in range(per_class):
                arr = np.random.default_rng(i).integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def _data(root):
    train, evals, _ = build_data(load_config(None, ["data.dataset=folder", f"data.root={root}"]))
    return train, evals


def test_every_bad_file_in_one_error(tmp_path):
    root = _tree(tmp_path / "d")
    (root / "train" / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # header cut short
    (root / "val" / "a" / "notes.jpg").write_text("not an image")  # a text file named .jpg
    lines = []
    with pytest.raises(UserError) as e:
        check_data(*_data(root), progress=False, out=lines.append)
    msg = str(e.value)
    assert msg.startswith("2 of 9 image files cannot be read")
    assert str(root / "train" / "b" / "1.png") in msg and str(root / "val" / "a" / "notes.jpg") in msg
    assert "UnidentifiedImageError" in msg
    assert lines[:2] == [f"data train: 4 images (a 2, b 2) from folder at {root} (train)",
                         f"data val: 5 images (a 3, b 2) from folder at {root} (val)"]


def test_a_truncated_image_passes_the_header_check_only(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _tree(tmp_path / "d")
    cut = root / "train" / "a" / "1.png"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 3])  # a third of the file: the header is intact
    assert check_data(*_data(root), progress=False, out=None, mode="headers") == 8
    with pytest.raises(UserError, match=rf"1 of 8 image files cannot be read.*\n  {cut}: OSError"):
        check_data(*_data(root), progress=False, out=None)  # full, although the header check is cached
    cfg = load_config(None, ["data.dataset=folder", f"data.root={root}", "data.check=headers"])
    assert cfg["data"]["check"] == "headers"
    with pytest.raises(UserError, match="'data.check' must be full"):
        load_config(None, ["data.check=pixels"])


def test_many_bad_files_are_listed_up_to_a_limit(tmp_path):
    paths = []
    for i in range(check.SHOWN + 3):
        paths.append(str(tmp_path / f"{i:02d}.png"))
        (tmp_path / f"{i:02d}.png").write_text("x")
    bad = check_files(paths, cache=None, progress=False)
    assert sorted(bad) == sorted(paths)
    root = _tree(tmp_path / "d", per_class=1)
    for i in range(check.SHOWN + 3):
        (root / "train" / "a" / f"bad{i:02d}.png").write_text("x")
    with pytest.raises(UserError) as e:
        check_data(*_data(root), progress=False, out=None)
    listed = [ln for ln in str(e.value).splitlines() if ln.startswith("  /")]
    assert len(listed) == check.SHOWN and str(e.value).endswith("... and 3 more")


def test_second_check_reads_no_file(tmp_path, monkeypatch):
    root = _tree(tmp_path / "d")
    train, evals = _data(root)
    assert check_data(train, evals, progress=False, out=None) == 8
    opened = []
    real = check._probe
    monkeypatch.setattr(check, "_probe", lambda p, full: opened.append(p) or real(p, full))
    assert check_data(train, evals, progress=False, out=None) == 8
    assert opened == []  # every file came from the cache
    changed = root / "val" / "b" / "0.png"
    Image.new("RGB", (7, 7)).save(changed)  # new size and mtime: read again
    assert check_data(train, evals, progress=False, out=None) == 8
    assert opened == [str(changed)]


def test_synthetic_data_is_not_checked():
    assert check_data(*build_data(load_config(None, ["data.train_size=8", "data.val_size=4"]))[:2],
                      progress=False, out=None) == 0


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "vimd_models.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_cli_check_data(tmp_path):
    root = _tree(tmp_path / "d")
    ok = _cli("check-data", "configs/demo_teacher.yaml", "data.dataset=folder", f"data.root={root}")
    assert ok.returncode == 0, ok.stderr
    out = ok.stdout.splitlines()
    assert out[-4:] == ["class    train      val", "a            2        2", "b            2        2",
                        "data: all 8 image files open"]
    (root / "val" / "b" / "0.png").write_bytes(b"GIF89a")
    bad = _cli("check-data", "configs/demo_teacher.yaml", "data.dataset=folder", f"data.root={root}")
    assert bad.returncode == 2 and "1 of 8 image files cannot be read" in bad.stderr
    assert str(root / "val" / "b" / "0.png") in bad.stderr and "Traceback" not in bad.stderr
