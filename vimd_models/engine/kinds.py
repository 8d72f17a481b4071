"""Task kinds: the data a task of each kind trains and evaluates on, and its evaluation.

Every task class (vimd_models.tasks) names its ``kind``; ``KINDS`` maps the name to a
``Kind``. Evaluation sums two per-sample metrics over each dataset (sharded over the ranks, then
all-reduced) and reports their means.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..data import build_classification, build_sr, make_loader
from ..tasks import Task, task_class
from .distributed import dist_info, to_device
from .metrics import psnr_y, ssim_y, topk_correct


@dataclass(frozen=True)
class Kind:
    data: Callable[[dict, type[Task]], tuple]  # -> (train dataset or None, [eval datasets], num_classes or None)
    eval_batch_size: Callable[[dict], int]
    batch_sums: Callable[[nn.Module, list, dict], tuple]  # -> (metric 1 sum, metric 2 sum, samples)
    metrics: tuple[str, str]  # names of the two metrics; the first picks the best epoch
    scale: float  # metric = scale * sum / samples

    @property
    def best_key(self) -> str:
        return f"val_{self.metrics[0]}"


def _classify_data(cfg: dict, task: type[Task]):
    train_view, eval_view = task.views(cfg)
    val = build_classification(cfg, "val", eval_view)
    train = None if task.data_free else build_classification(cfg, "train", train_view)
    return train, [val], val.num_classes


def _classify_sums(model: nn.Module, batch, cfg: dict):
    x, y = batch
    c = topk_correct(model(x).float(), y)
    return c["top1"], c["top5"], y.shape[0]


def _sr_data(cfg: dict, task: type[Task]):
    train = None if task.data_free else build_sr(cfg, "train")[0]
    return train, build_sr(cfg, "val"), None


def _sr_sums(model: nn.Module, batch, cfg: dict):
    lr, hr = batch
    sr = model(lr).float()
    b = cfg["data"]["scale"]  # border crop = scale
    return psnr_y(sr, hr, b).sum().item(), ssim_y(sr, hr, b).sum().item(), hr.shape[0]


KINDS = {
    "classify": Kind(_classify_data, lambda cfg: cfg["data"]["eval_batch_size"], _classify_sums, ("top1", "top5"), 100),
    "sr": Kind(_sr_data, lambda cfg: 1, _sr_sums, ("psnr", "ssim"), 1.0),
}


def build_data(cfg: dict):
    """(train dataset or None for data-free tasks, [eval datasets], num_classes or None) of the
    config's task."""
    task = task_class(cfg["task"])
    return KINDS[task.kind].data(cfg, task)


@torch.no_grad()
def evaluate(model: nn.Module, kind: str, datasets, cfg: dict, device=None) -> dict:
    """Classification: top1/top5 (%) per dataset; SR: PSNR/SSIM (Y, border = scale) per dataset.
    The first dataset's metrics are also given without a prefix."""
    k = KINDS[kind]
    device = device or next(model.parameters()).device
    rank, world = dist_info()
    was = model.training
    model.eval()
    out = {}
    for i, ds in enumerate(datasets):
        loader = make_loader(ds, k.eval_batch_size(cfg), cfg["seed"], 0, train=False,
                             num_workers=cfg["data"]["num_workers"], rank=rank, world=world)
        sums = torch.zeros(3, dtype=torch.float64)
        for batch in loader:
            sums += torch.tensor(k.batch_sums(model, to_device(batch, device), cfg), dtype=torch.float64)
        if world > 1:
            dist.all_reduce(sums)
        n = max(1.0, sums[2].item())
        name = getattr(ds, "name", None) or f"set{i}"
        m = {k.metrics[0]: k.scale * sums[0].item() / n, k.metrics[1]: k.scale * sums[1].item() / n}
        if i == 0:
            out.update(m)
        if len(datasets) > 1:
            out.update({f"{name}/{key}": v for key, v in m.items()})
    model.train(was)
    return out
