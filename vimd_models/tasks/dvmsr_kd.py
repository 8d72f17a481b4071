"""DVMSR with a teacher network's output as extra supervision: L1(S, HR) + lam * L1(S, T)."""
from __future__ import annotations

import torch

from ..distill import losses
from .base import check, load_teacher, register_task
from .supervised import SRTask


@register_task("dvmsr_kd")
class DVMSRKDTask(SRTask):
    config = {"distill": {"lam": 1.0}}  # weight of the teacher term

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        lam = cfg["distill"]["lam"]
        check(isinstance(lam, (int, float)) and lam >= 0, f"config 'distill.lam' must be a number >= 0, got {lam!r}")

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__(cfg)
        self.teacher = load_teacher(cfg)
        self.frozen = [self.teacher]

    def forward(self, batch):
        lr, hr = batch
        with torch.no_grad():
            t = self.teacher(lr)
        return losses.sr_kd(self.model(lr), hr, t, lam=self.cfg["distill"]["lam"])
