"""SR on the photos scikit-image ships: the split, the pairs, bicubic, and `vimd sr-photos` end to end
on a reduced split."""
import os

import pytest
import torch

pytest.importorskip("skimage")

from vimd_models.cli import main  # noqa: E402
from vimd_models.data import build_sr  # noqa: E402
from vimd_models.data.photos import PHOTOS, PhotoSR, read_photo  # noqa: E402
from vimd_models.data.sr import make_lr  # noqa: E402
from vimd_models.engine import photos  # noqa: E402
from vimd_models.engine.config import load_config  # noqa: E402
from vimd_models.engine.metrics import psnr_y  # noqa: E402


def test_train_and_test_photos_are_disjoint_and_present():
    assert not set(PHOTOS["train"]) & set(PHOTOS["test"])
    for name in PHOTOS["train"] + PHOTOS["test"]:
        img = read_photo(name)
        assert img.dtype == torch.uint8 and img.shape[0] == 3 and min(img.shape[1:]) >= 256


def test_grey_photo_has_three_equal_channels():
    img = read_photo("camera.png")
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_pairs_are_mod_cropped_with_matlab_bicubic_lr():
    ds = PhotoSR("test", 4)
    hr, lr = ds.get_u8(0)  # chelsea: 451 x 300 -> 448 x 300
    assert hr.shape == (3, 300, 448) and lr.shape == (3, 75, 112)
    assert torch.equal(lr, make_lr(hr, 4))


def test_training_split_cycles_over_photos_for_train_size_patches():
    cfg = load_config(os.path.join(photos.CONFIG_DIR, "photos_sr.yaml"), ["data.train_size=25"])
    (train,) = build_sr(cfg, "train")
    assert len(train) == 25
    lr, hr = train[(13, 7)]  # photo 13 % 10 = 3, a 64x64 patch
    assert lr.shape == (3, 16, 16) and hr.shape == (3, 64, 64)
    (test,) = build_sr(cfg, "val")
    assert len(test) == len(PHOTOS["test"])


def test_bicubic_upsampling_is_a_real_baseline():
    ds = PhotoSR("test", 4)
    hr, lr = ds.get_u8(1)
    up = photos.bicubic_up(lr, 4)
    assert up.shape == hr.shape
    p = psnr_y(up[None], hr[None].float() / 255, 4).item()
    blocky = torch.nn.functional.interpolate(lr[None].float() / 255, scale_factor=4, mode="nearest")
    assert 20 < p < 40 and p > psnr_y(blocky, hr[None].float() / 255, 4).item()


def test_sr_photos_end_to_end_on_a_reduced_split(tmp_path, monkeypatch):
    monkeypatch.setitem(PHOTOS, "train", ("coins.png", "moon.png"))
    monkeypatch.setitem(PHOTOS, "test", ("coins.png",))  # same photo: only the pipeline is checked here
    out = tmp_path / "sr"
    assert main(["sr-photos", "--out", str(out), "--iterations", "2"]) == 0
    text = (out / "results.md").read_text()
    for label in [photos.BICUBIC] + [r.label for r in photos.RUNS]:
        assert label in text
    assert "coins.png (384x300)" in text
    assert (out / "results.png").stat().st_size > 0 and (out / "crops.png").stat().st_size > 0
    assert main(["sr-photos", "--out", str(out), "--iterations", "0"]) == 2


def test_readme_table_is_the_committed_run():
    """The README's sr-photos table rows are those of the committed run's results.md (bold mean row
    aside, whose label the README extends), and the run measured every method on every test photo."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "sr_photos", "results.md")) as f:
        rows = [line for line in f.read().splitlines() if line.startswith("| ") and ".png (" in line]
    with open(os.path.join(root, "README.md")) as f:
        readme = f.read()
    assert len(rows) == len(PHOTOS["test"])
    for row in rows:
        assert row in readme
