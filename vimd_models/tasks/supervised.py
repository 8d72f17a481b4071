"""Supervised training: classifiers (HRVM-Net teacher, ResNet-34, ...) and SR networks
(SRResNet, DVMSR)."""
from __future__ import annotations

from torch import nn

from ..distill import losses
from .base import Task, model_from_config, register_task


@register_task("classify")
class ClassifyTask(Task):
    """CE with label smoothing; trains and evaluates on ``data.views`` (one view: hr_lr is read as hr)."""
    config = {"distill": {"label_smoothing": 0.1}}

    @classmethod
    def views(cls, cfg: dict) -> tuple[str, str]:
        v = cfg["data"]["views"] if cfg["data"]["views"] != "hr_lr" else "hr"
        return v, v

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__(cfg)
        self.model = model_from_config(cfg, num_classes=num_classes)

    def forward(self, batch):
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x).float(), y, label_smoothing=self.cfg["distill"]["label_smoothing"])
        return loss, {"ce": loss.detach()}


@register_task("sr")
class SRTask(Task):
    """L1 on (lr, hr) pairs."""
    kind = "sr"
    train_views = eval_views = None  # SR data has one form: (lr, hr) pairs

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__(cfg)
        self.model = model_from_config(cfg)

    def forward(self, batch):
        lr, hr = batch
        return losses.sr_kd(self.model(lr), hr)
