"""SR data: MATLAB-style bicubic LR (checked against PIL's float bicubic away from the edges), the
test-set folder layouts as distributed, and the memory cache."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vimd_models.data import SRPairs, build_sr, make_loader, resolve_sr_folder
from vimd_models.data.sr import imresize, make_lr
from vimd_models.engine.config import load_config
from vimd_models.errors import UserError


def _smooth(h, w, seed):
    """A smooth-ish uint8 image (noise would make every resize look the same)."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    chans = [128 + 100 * np.sin(x / (3 + c) + g.uniform(0, 6)) * np.cos(y / (4 + c)) + g.normal(0, 8, (h, w))
             for c in range(3)]
    return np.clip(np.stack(chans, -1), 0, 255).round().astype(np.uint8)


def _save(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def _read(path):
    return torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)


# ---- MATLAB bicubic -----------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_imresize_matches_pil_float_bicubic_inside(scale):
    """PIL's bicubic (a = -0.5, kernel stretched by the scale when shrinking, same pixel centres)
    differs from MATLAB only at the edges (PIL renormalises, MATLAB mirrors)."""
    img = _smooth(12 * scale, 16 * scale, scale).astype(np.float64)
    ours = imresize(torch.from_numpy(img).permute(2, 0, 1), 1 / scale).numpy()
    for c in range(3):
        pil = np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F").resize(
            (16, 12), Image.Resampling.BICUBIC), dtype=np.float64)
        inner = (slice(2, -2), slice(2, -2))  # taps reach 2 * scale input pixels from the centre
        np.testing.assert_allclose(ours[c][inner], pil[inner], atol=2e-3)
        assert np.abs(ours[c] - pil).max() > 1e-2  # ...and the edges do differ (mirrored, not clipped)


def test_imresize_properties():
    flat = torch.full((3, 20, 28), 77.0)
    assert torch.allclose(imresize(flat, 1 / 4), torch.full((3, 5, 7), 77.0, dtype=torch.float64))
    img = torch.from_numpy(_smooth(20, 28, 1)).permute(2, 0, 1).double()
    down = imresize(img, 1 / 4)
    assert down.shape == (3, 5, 7)
    assert torch.allclose(imresize(img.flip(-1), 1 / 4), down.flip(-1))  # symmetric kernel and edges
    assert imresize(img, 1 / 3).shape == (3, 7, 10)  # ceil, like MATLAB
    lr = make_lr(img.to(torch.uint8), 4)
    assert lr.dtype == torch.uint8 and torch.equal(lr, torch.floor(down.clamp(0, 255) + 0.5).to(torch.uint8))


# ---- layouts ------------------------------------------------------------------------------------
def _hr_lr(root, hr_sub, lr_sub, lr_name, names=("baby", "bird"), size=(26, 30), scale=4):
    hrs = {}
    for i, n in enumerate(names):
        hrs[n] = _smooth(*size, i)
        _save(str(root / hr_sub / f"{n}.png"), hrs[n])
        if lr_sub is not None:
            h, w = size[0] // scale, size[1] // scale
            _save(str(root / lr_sub / lr_name.format(n=n)), _smooth(h, w, 50 + i))
    return hrs


def test_benchmark_layout_hr_and_lr_bicubic(tmp_path):
    _hr_lr(tmp_path / "Set5", "HR", "LR_bicubic/X4", "{n}x4.png")
    assert resolve_sr_folder(str(tmp_path / "Set5"), 4) == (
        str(tmp_path / "Set5" / "HR"), str(tmp_path / "Set5" / "LR_bicubic" / "X4"), "Set5")
    pairs = SRPairs.from_folder(str(tmp_path / "Set5"), 4)
    hr, lr = pairs.get_u8(0)
    assert hr.shape == (3, 24, 28) and lr.shape == (3, 6, 7)  # HR mod-cropped to the scale
    assert torch.equal(lr, _read(tmp_path / "Set5" / "LR_bicubic" / "X4" / "babyx4.png")) and pairs.name == "Set5"


def test_basicsr_layout_gtmod12_and_lrbicx4(tmp_path):
    _hr_lr(tmp_path / "Set14", "GTmod12", "LRbicx4", "{n}.png", size=(24, 36))
    hr_dir, lr_dir, name = resolve_sr_folder(str(tmp_path / "Set14"), 4)
    assert (hr_dir, lr_dir, name) == (str(tmp_path / "Set14" / "GTmod12"), str(tmp_path / "Set14" / "LRbicx4"), "Set14")
    hr, lr = SRPairs.from_folder(str(tmp_path / "Set14"), 4).get(1)
    assert torch.equal(lr, _read(tmp_path / "Set14" / "LRbicx4" / "bird.png").float() / 255) and hr.shape == (3, 24, 36)


def test_div2k_valid_hr_with_sibling_lr_folder(tmp_path):
    _hr_lr(tmp_path, "DIV2K_valid_HR", "DIV2K_valid_LR_bicubic/X4", "{n}x4.png", names=("0801", "0802"))
    hr_dir, lr_dir, name = resolve_sr_folder(str(tmp_path / "DIV2K_valid_HR"), 4)
    assert lr_dir == str(tmp_path / "DIV2K_valid_LR_bicubic" / "X4") and name == "DIV2K_valid"
    assert SRPairs.from_folder(hr_dir, 4).lr_files[1].endswith("0802x4.png")
    assert resolve_sr_folder(str(tmp_path / "DIV2K_valid_HR"), 2)[1] is None  # no X2 folder: made


def test_hr_only_folders_make_matlab_lr(tmp_path):
    hrs = _hr_lr(tmp_path / "Urban100", "HR", None, None)  # HR/ without LR_bicubic/
    _hr_lr(tmp_path / "plain", "", None, None)
    for path in (tmp_path / "Urban100", tmp_path / "plain"):
        assert resolve_sr_folder(str(path), 4)[1] is None
        hr, lr = SRPairs.from_folder(str(path), 4).get_u8(0)
        crop = torch.from_numpy(hrs["baby"][:24, :28]).permute(2, 0, 1)
        assert torch.equal(hr, crop) and torch.equal(lr, make_lr(crop, 4))
    with pytest.raises(UserError, match="not found"):
        resolve_sr_folder(str(tmp_path / "missing"), 4)


def test_test_sets_in_config_and_div2k_training_lr(tmp_path):
    _hr_lr(tmp_path / "Set5", "HR", "LR_bicubic/X4", "{n}x4.png")
    _hr_lr(tmp_path / "BasicSR" / "Set14", "GTmod12", "LRbicx4", "{n}.png")
    _hr_lr(tmp_path, "DIV2K_train_HR", "DIV2K_train_LR_bicubic/X4", "{n}x4.png", names=("0001", "0002"),
           size=(64, 64))
    cfg = load_config(None, ["task=sr", "data.dataset=sr_folder", f"data.root={tmp_path / 'DIV2K_train_HR'}",
                             "data.patch_size=32", "data.cache=memory",
                             f"data.test_sets=[{tmp_path / 'Set5'}, {tmp_path / 'BasicSR' / 'Set14'}]"])
    (train,) = build_sr(cfg, "train")
    assert train.base.lr_files[0].endswith(os.path.join("DIV2K_train_LR_bicubic", "X4", "0001x4.png"))
    assert [t.name for t in build_sr(cfg, "val")] == ["Set5", "Set14"]


# ---- memory cache -------------------------------------------------------------------------------
def test_memory_cache_gives_the_same_batches(tmp_path):
    _hr_lr(tmp_path, "HR", None, None, names=("a", "b", "c", "d"), size=(40, 48))
    batches = {}
    for cache in ("none", "memory"):
        cfg = load_config(None, ["task=sr", "data.dataset=sr_folder", f"data.root={tmp_path / 'HR'}",
                                 "data.patch_size=16", "data.batch_size=2", f"data.cache={cache}"])
        (train,) = build_sr(cfg, "train")
        batches[cache] = [b for b in make_loader(train, 2, seed=0, epoch=1, train=True)]
        assert (train.base._mem is not None) == (cache == "memory")
    for (lr1, hr1), (lr2, hr2) in zip(batches["none"], batches["memory"]):
        assert lr1.dtype == torch.float32 and lr1.shape == (2, 3, 4, 4) and hr1.shape == (2, 3, 16, 16)
        assert torch.equal(lr1, lr2) and torch.equal(hr1, hr2)
    with pytest.raises(UserError, match="data.cache"):
        load_config(None, ["data.cache=disk"])


SHARED = r'''
import os, sys, torch, torch.distributed as dist
from vimd_models.data import SRPairs
dist.init_process_group("gloo")
ds = SRPairs(sys.argv[1], 4, cache="memory")
ds.preload()
for i in range(len(ds)):
    for got, want in zip(ds.get_u8(i), ds._decode(i)):
        assert torch.equal(got, want), i
maps = open("/proc/self/maps").read()
assert "vimd-sr-" in maps and "(deleted)" in maps.split("vimd-sr-")[1].splitlines()[0], "not mapped from shared memory"
dist.barrier()
assert not os.path.exists(ds._shared_path()) and not os.path.exists(ds._shared_path() + ".json")
os.write(1, f"shared {dist.get_rank()}\n".encode())  # one write: the ranks share stdout
dist.destroy_process_group()
'''


def test_memory_cache_is_one_copy_per_node_under_torchrun(tmp_path):
    """Two processes map one decoded copy from shared memory; the file is gone once both have."""
    import subprocess
    import sys
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "hr")
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24 + 4 * i, 32, 3), dtype=np.uint8)).save(tmp_path / "hr" / f"{i}.png")
    (tmp_path / "run.py").write_text(SHARED)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(tmp_path / "run.py"), str(tmp_path / "hr")], capture_output=True, text=True, timeout=180,
                       env=dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1"))
    assert r.returncode == 0 and "shared 0" in r.stdout and "shared 1" in r.stdout, r.stderr[-3000:]
