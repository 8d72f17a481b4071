"""ViMD: an SRVM-Net student on LR images learns from a frozen HRVM-Net teacher on the HR views:
CE + alpha * (L_LD + beta * L_HSD)."""
from __future__ import annotations

import torch

from ..distill import losses
from ..errors import UserError
from ..weights import load
from .base import Task, check, freeze, load_teacher, model_from_config, register_task


def _hsd_indices(spec) -> list[int] | None:
    if spec == "all":
        return None
    if spec == "last":
        return [-1]
    return list(spec)


@register_task("vimd")
class ViMDTask(Task):
    config = {
        "model": {"sr_checkpoint": None},  # the trained SR network loaded into the student's frozen sr part
        "distill": {"alpha": 1.0, "beta": 20.0, "temperature": 4.0, "label_smoothing": 0.1,
                    "hsd_layers": "all",  # all | last | list of layer indices
                    "use_ld": True},
    }
    train_views = "hr_lr"
    eval_views = "lr"

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        hl = cfg["distill"]["hsd_layers"]
        check(hl in ("all", "last") or (isinstance(hl, list) and all(isinstance(i, int) for i in hl)),
              "config 'distill.hsd_layers' must be all, last or a list of layer indices")

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__(cfg)
        self.model = model_from_config(cfg, num_classes=num_classes)
        sr_ckpt = cfg["model"].get("sr_checkpoint")
        sr = getattr(self.model, "sr", None)
        if sr_ckpt:
            if sr is None:
                raise UserError(f"config 'model.sr_checkpoint': model {cfg['model']['name']} has no SR sub-network")
            load(sr, sr_ckpt, finetune=True, require_all=True, what="config 'model.sr_checkpoint'",
                 opt_out="point it at an SR network trained here (configs/srresnet_div2k.yaml)")
        if sr is not None:
            self.frozen.append(freeze(sr))
        d = cfg["distill"]
        self.alpha = float(d["alpha"])
        self.indices = _hsd_indices(d["hsd_layers"])
        if self.alpha:
            self.teacher = load_teacher(cfg, num_classes=num_classes)
            self.frozen.append(self.teacher)

    def forward(self, batch):
        hr, lr, y = batch
        d = self.cfg["distill"]
        if not self.alpha:
            logits = self.model(lr)
            return losses.vimd(logits, y, None, [], [], alpha=0.0, beta=0.0, temperature=d["temperature"],
                               label_smoothing=d["label_smoothing"])
        idx = self.indices if d["beta"] else [-1]
        with torch.no_grad():
            t_logits, t_feats = self.teacher.forward_intermediates(hr, idx)
        s_logits, s_feats = self.model.forward_intermediates(lr, idx)
        return losses.vimd(s_logits, y, t_logits, s_feats, t_feats, alpha=self.alpha, beta=float(d["beta"]),
                           temperature=d["temperature"], label_smoothing=d["label_smoothing"], use_ld=d["use_ld"])
