"""DFKD-FGVC: adversarial data-free distillation of a fine-grained classifier.

Every cycle runs ``gen_steps`` generator steps (w_bn * prior - L_KD) and then ``student_steps``
student steps (L_KD + w_mhad * L_MHAD + w_sfcl * L_SFCL); one engine step is one student step, the
generator steps run at the start of each cycle. The generator's prior matches the teacher's
BatchNorm statistics, or, for a BN-free teacher (ViM), the norm-input statistics recorded when the
teacher was trained (``train.record_norm_stats``: this module's run-end hook writes them).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..checkpoint import load_optimizer_state, save_weights
from ..distill import losses
from ..distill.dfkd import (PRIORS, AttentionGenerator, MixedHighOrderAttention, as_map, build_prior, mhad_loss,
                            pre_logits, projector, record_norm_stats)
from .base import Task, average_gradients, load_teacher, model_from_config, on_run_end, one_of, register_task

NORM_STATS_FILE = "norm_stats.safetensors"


def _evenly(n: int, k: int) -> list[int]:
    return [round((i + 1) * n / k) - 1 for i in range(k)]


@register_task("dfkd")
class DFKDTask(Task):
    config = {
        "distill": {"dfkd": {
            "nz": 256, "ngf": 64, "gen_steps": 20, "student_steps": 15,
            "gen_lr": 1e-3, "w_bn": 0.3, "w_mhad": 10.0, "w_sfcl": 8.0, "tau": 0.07,
            "prior": "auto",      # auto | bn | norm_stats | none
            "norm_stats": None,   # path to recorded norm-input statistics (BN-free teachers)
            "sam_reduction": 8, "sam_lambda": 0.05, "proj_dim": 128,
        }},
        "train": {"record_norm_stats": False},  # classify: save the trained model's norm-input statistics
    }
    data_free = True
    ddp_ok = False

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        one_of(cfg["distill"]["dfkd"]["prior"], ("auto", *PRIORS), "distill.dfkd.prior")

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__(cfg)
        f = cfg["distill"]["dfkd"]
        self.model = model_from_config(cfg, num_classes=num_classes)
        self.teacher = load_teacher(cfg, num_classes=num_classes)
        self.frozen = [self.teacher]
        size = cfg["data"]["img_size"]
        self.generator = AttentionGenerator(f["nz"], f["ngf"], size, f["sam_reduction"], f["sam_lambda"])
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=f["gen_lr"], betas=(0.5, 0.99))
        t_maps, s_maps = self._probe_maps(size)
        self.mhad = nn.ModuleList(MixedHighOrderAttention(t.shape[1]) for t in t_maps)
        self.adapters = nn.ModuleList(nn.Conv2d(s.shape[1], t.shape[1], 1) for s, t in zip(s_maps, t_maps))
        self.proj_t = projector(t_maps[-1].shape[1], f["proj_dim"])
        self.proj_s = projector(s_maps[-1].shape[1], f["proj_dim"])
        self.prior, self.ref_stats = build_prior(self.teacher, f)
        self.cycle_pos = 0

    @torch.no_grad()
    def _probe_maps(self, size: int):
        """Choose up to four evenly spread feature levels of teacher and student (``t_idx``,
        ``s_idx``) and return their maps on a probe batch, for sizing the MHAD modules."""
        probe = torch.rand(2, 3, size, size)
        was = self.model.training
        self.model.eval()
        try:
            n_t = len(self.teacher.forward_intermediates(probe)[1])
            n_s = len(self.model.forward_intermediates(probe)[1])
            k = min(4, n_t, n_s)
            self.t_idx, self.s_idx = _evenly(n_t, k), _evenly(n_s, k)
            t_maps = [as_map(m) for m in self.teacher.forward_intermediates(probe, self.t_idx)[1]]
            s_maps = [as_map(m) for m in self.model.forward_intermediates(probe, self.s_idx)[1]]
        finally:
            self.model.train(was)
        return t_maps, s_maps

    def prior_loss(self) -> torch.Tensor:
        cur = self.prior.pop()
        stats = []
        for i, (m, v, mod) in sorted(cur.items()):
            if self.ref_stats is None:
                stats.append((m, v, mod.running_mean.float(), mod.running_var.float()))
            else:
                rm, rv = self.ref_stats[i]
                stats.append((m, v, rm.to(m.device), rv.to(m.device)))
        return losses.bn_stat_loss(stats)

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.generator.nz, device=next(self.generator.parameters()).device)

    def generator_steps(self, n: int) -> dict:
        f = self.cfg["distill"]["dfkd"]
        params = [p for p in self.generator.parameters() if p.requires_grad]
        comps = {}
        for _ in range(f["gen_steps"]):
            x = self.generator(self._z(n))
            t_logits = self.teacher(x)
            prior = self.prior_loss() if self.prior is not None else x.new_zeros(())
            kd = losses.kd_kl(self.model(x), t_logits, 1.0)
            loss = f["w_bn"] * prior - kd
            grads = torch.autograd.grad(loss, params)
            average_gradients(grads)
            for p, g in zip(params, grads):
                p.grad = g
            self.gen_opt.step()
            self.gen_opt.zero_grad(set_to_none=True)
            comps = {"g_prior": prior.detach(), "g_kd": kd.detach()}
        return comps

    def forward(self, batch):
        f = self.cfg["distill"]["dfkd"]
        n = self.cfg["data"]["batch_size"]
        gen_comps = {}
        if self.cycle_pos == 0:
            gen_comps = self.generator_steps(n)
        self.cycle_pos = (self.cycle_pos + 1) % f["student_steps"]
        with torch.no_grad():
            x = self.generator(self._z(n))
            t_logits, t_maps = self.teacher.forward_intermediates(x, self.t_idx)
            if self.prior is not None:
                self.prior.pop()
        s_logits, s_maps = self.model.forward_intermediates(x, self.s_idx)
        mh = mhad_loss(t_maps, s_maps, self.mhad, self.adapters)
        sf = losses.nt_xent(self.proj_t(pre_logits(t_maps[-1]).float()), self.proj_s(pre_logits(s_maps[-1]).float()), f["tau"])
        loss, comps = losses.dfkd_student(s_logits, t_logits, mh, sf, w_mhad=f["w_mhad"], w_sfcl=f["w_sfcl"])
        return loss, {**comps, **gen_comps}

    def batch_size(self, batch) -> int:
        return int(self.cfg["data"]["batch_size"])

    def extra_state(self) -> dict:
        return {"gen_opt": self.gen_opt.state_dict(), "cycle_pos": self.cycle_pos}

    def load_extra_state(self, state: dict) -> None:
        load_optimizer_state(self.gen_opt, state["gen_opt"], "the generator's optimizer state in the checkpoint")
        self.cycle_pos = int(state["cycle_pos"])


@on_run_end
def write_norm_stats(task: Task, model: nn.Module, run_dir: str, inputs, max_batches: int = 8) -> None:
    """A classifier trained with ``train.record_norm_stats``: its norm layers' input statistics
    over up to ``max_batches`` training batches, in ``<run>/norm_stats.safetensors`` (the prior
    of a later data-free distillation from it: ``distill.dfkd.norm_stats``)."""
    if task.kind != "classify" or task.data_free or not task.cfg["train"]["record_norm_stats"]:
        return
    model.eval()
    try:
        stats = record_norm_stats(model, (x for x, _ in zip(inputs(), range(max_batches))))
    except ValueError as e:  # a model without norm layers (BatchNorm teachers use the bn prior)
        print(f"norm statistics not recorded: {e}")
        return
    save_weights(os.path.join(run_dir, NORM_STATS_FILE), stats, {"model": task.cfg["model"]["name"]})
