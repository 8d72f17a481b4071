"""Datasets, the ViMD LR protocol, and loaders whose randomness is a pure function of
(seed, epoch, sample index): a resumed run sees exactly the batches an uninterrupted one would."""
from __future__ import annotations

import signal

import torch
from torch.utils.data import DataLoader, Sampler

from ..errors import UserError
from .folders import READERS, ImageList, register_reader
from .photos import PhotoSR
from .sr import SRPairs, SyntheticSR, resolve_sr_folder, to_float
from .synthetic import SyntheticFineGrained
from .transforms import LowResProtocol, random_crop_pair


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)


class ClassificationData(torch.utils.data.Dataset):
    """Items are keyed by (index, aug_seed); yields (view..., label) with views 'hr', 'lr' or 'hr_lr'."""

    def __init__(self, base, protocol: LowResProtocol, views: str):
        self.base, self.protocol, self.views = base, protocol, views
        self.num_classes = getattr(base, "num_classes")

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key
        img, label = self.base.get(index)
        hr, lr = self.protocol(img, _gen(seed))
        if self.views == "hr":
            return hr, label
        if self.views == "lr":
            return lr, label
        return hr, lr, label


class SRData(torch.utils.data.Dataset):
    """Training: aligned random (HR patch, LR patch) with flips, cut from the uint8 images; evaluation:
    whole (HR, LR) images. Items are float (lr, hr) -- the model input first."""

    def __init__(self, base, patch: int | None, scale: int):
        self.base, self.patch, self.scale = base, patch, scale
        self.name = getattr(base, "name", "sr")

    def __len__(self) -> int:
        return len(self.base)

    def prepare(self) -> None:
        """Fill the base dataset's memory cache (data.cache: memory) before workers start."""
        if hasattr(self.base, "preload"):
            self.base.preload()

    def __getitem__(self, key):
        index, seed = key
        hr, lr = self.base.get_u8(index)
        if self.patch is not None:
            hr, lr = random_crop_pair(hr, lr, self.patch, self.scale, _gen(seed))
        return to_float(lr), to_float(hr)


class EpochSampler(Sampler):
    """Shuffled (or ordered) keys (index, aug_seed) of one epoch for one rank, skipping ``start``
    samples of this rank's share (resume mid-epoch). Same seed + epoch -> same order on every run."""

    def __init__(self, n: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world: int = 1,
                 start: int = 0, drop_last: bool = False, batch_size: int = 1, pad: bool = True):
        g = _gen(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
        if pad or drop_last:  # equal shares (training); evaluation shards without padding
            per = n // world if drop_last else -(-n // world)
            order = (order * 2)[: per * world] if per * world > n else order[: per * world]
        mine = order[rank::world]
        if drop_last:
            mine = mine[: len(mine) - len(mine) % batch_size]
        base = seed * 7_919 + epoch * 104_729 if shuffle else seed * 7_919
        self.keys = [(i, base * 1_000_003 + i) for i in mine][start:]

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def make_loader(ds, batch_size: int, seed: int, epoch: int, train: bool, num_workers: int = 0,
                rank: int = 0, world: int = 1, start_batch: int = 0) -> DataLoader:
    """A loader over this rank's share; ``start_batch`` skips batches already trained (resume).
    It has its own generator, so creating it never draws from the global RNG. A dataset with a
    ``prepare()`` (e.g. an SR memory cache to fill) is prepared first, in this process."""
    if hasattr(ds, "prepare"):
        ds.prepare()
    sampler = EpochSampler(len(ds), seed, epoch, shuffle=train, rank=rank, world=world,
                           start=start_batch * batch_size, drop_last=train, batch_size=batch_size, pad=train)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=train, persistent_workers=False, generator=_gen(seed + epoch),
                      worker_init_fn=_ignore_stop_signals if num_workers else None)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave a scheduler's SIGUSR1 (sent to every process of the job ahead of a
    preemption) to the training process, which finishes its step and checkpoints. (SIGTERM keeps
    its default action: the loader's own shutdown terminates workers with it.)"""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _synthetic_classification(cfg: dict, split: str) -> SyntheticFineGrained:
    d = cfg["data"]
    n = d["train_size"] if split == "train" else d["val_size"]
    return SyntheticFineGrained(d["num_classes"], n, split, cfg["seed"], render_size=d["img_size"] * 5 // 4)


def _on_disk_classification(cfg: dict, split: str) -> ImageList:
    d = cfg["data"]
    name = d["dataset"]
    if not d["root"]:
        raise UserError(f"config 'data.root' must name the {name} dataset folder")
    samples, classes = READERS[name](d["root"], split)
    return ImageList(samples, classes, where=f"{name} at {d['root']} ({split})")


def classification_datasets() -> dict:
    """data.dataset -> (cfg, split) -> base dataset with .get(i) -> (image, label) and .num_classes:
    the synthetic set and every registered reader (folders.register_reader)."""
    return {"synthetic": _synthetic_classification, **dict.fromkeys(READERS, _on_disk_classification)}


def _synthetic_sr(cfg: dict, split: str) -> SyntheticSR:
    d = cfg["data"]
    n = d["train_size"] if split == "train" else d["val_size"]
    return SyntheticSR(d["patch_size"], n, split, cfg["seed"], d["scale"])


def _sr_folder(cfg: dict, split: str) -> SRPairs:
    """data.root: an HR folder; LR from data.lr_root, else the LR folder next to it in a known layout
    (DIV2K_train_HR + DIV2K_train_LR_bicubic/X4), else made by MATLAB bicubic."""
    d = cfg["data"]
    if split != "train":
        raise UserError("config 'data.test_sets' must list SR test sets to evaluate on (e.g. Set5, Set14)")
    if not d["root"]:
        raise UserError("config 'data.root' must name the HR training image folder")
    if d["lr_root"]:
        return SRPairs(d["root"], d["scale"], d["lr_root"], cache=d["cache"])
    return SRPairs.from_folder(d["root"], d["scale"], d["cache"])


# data.dataset -> (cfg, split) -> base dataset with .get(i) / .get_u8(i) -> (hr, lr); evaluation on
# data.test_sets (test set folders, see sr.resolve_sr_folder) takes precedence over the dataset's
# own evaluation split
def _photos(cfg: dict, split: str) -> PhotoSR:
    d = cfg["data"]
    return PhotoSR("train", d["scale"], d["train_size"]) if split == "train" else PhotoSR("test", d["scale"])


SR = {"synthetic": _synthetic_sr, "sr_folder": _sr_folder, "photos": _photos}


def build_classification(cfg: dict, split: str, views: str | None = None) -> ClassificationData:
    d = cfg["data"]
    proto = LowResProtocol(d["img_size"], d["lr_size"], train=split == "train", scale_min=d["scale_min"],
                           hflip=d["hflip"])
    known = classification_datasets()
    build = known.get(d["dataset"])
    if build is None:
        raise UserError(f"config 'data.dataset': unknown classification dataset {d['dataset']!r}; "
                        f"choose one of {', '.join(known)}")
    return ClassificationData(build(cfg, split), proto, views or d["views"])


def build_sr(cfg: dict, split: str) -> list[SRData]:
    """Train: one dataset of patches. Eval: one dataset per test set (or the dataset's validation split)."""
    d = cfg["data"]
    scale = d["scale"]
    if split != "train" and d["test_sets"]:
        return [SRData(SRPairs.from_folder(p, scale, d["cache"]), None, scale) for p in d["test_sets"]]
    build = SR.get(d["dataset"])
    if build is None:
        raise UserError(f"config 'data.dataset': {d['dataset']!r} is not an SR dataset; use one of {', '.join(SR)}")
    base = build(cfg, split)
    if split != "train":
        return [SRData(base, None, scale)]
    if d["patch_size"] % scale:
        raise UserError(f"config 'data.patch_size' ({d['patch_size']}) must be a multiple of data.scale ({scale})")
    return [SRData(base, d["patch_size"], scale)]


__all__ = ["SyntheticFineGrained", "LowResProtocol", "ClassificationData", "SRData", "EpochSampler",
           "make_loader", "build_classification", "build_sr", "ImageList", "SRPairs", "resolve_sr_folder", "READERS",
           "classification_datasets", "register_reader", "SR"]
