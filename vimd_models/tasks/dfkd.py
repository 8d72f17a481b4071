"""DFKD-FGVC: adversarial data-free distillation of a fine-grained classifier.

Each cycle synthesises one batch: class targets covering the teacher's classes evenly and a fresh,
learnable noise batch, then ``gen_steps`` steps of the generator and that noise on
w_cls * CE(T(x), y) + w_bn * prior - w_adv * L_adv (the student in eval mode, so its BatchNorm
statistics see only what it trains on); the batch goes into a pool of synthesised images. Then
``student_steps`` student steps (L_KD at temperature T + w_mhad * L_MHAD + w_sfcl * L_SFCL) on
batches drawn from the pool with flip-and-crop augmentation. One engine step is one student step.
The prior matches the teacher's BatchNorm statistics, or, for a BN-free teacher (ViM), the
norm-input statistics recorded when the teacher was trained (``train.record_norm_stats``: this
module's run-end hook writes them), or PSAQ-ViT's patch-similarity entropy.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_optimizer_state, save_weights
from ..distill import losses
from ..distill.dfkd import (PRIORS, AttentionGenerator, ImagePool, MixedHighOrderAttention, as_map, augment,
                            balanced_targets, build_prior, mhad_loss, pre_logits, projector, record_norm_stats)
from .base import (Task, average_gradients, check, load_teacher, model_from_config, on_run_end, one_of,
                   register_task)

NORM_STATS_FILE = "norm_stats.safetensors"
SFCL_POSITIVES = ("image", "class")


def _evenly(n: int, k: int) -> list[int]:
    return [round((i + 1) * n / k) - 1 for i in range(k)]


@register_task("dfkd")
class DFKDTask(Task):
    config = {
        "distill": {"dfkd": {
            "nz": 256, "ngf": 64, "gen_steps": 20, "student_steps": 15,
            "gen_lr": 1e-3, "w_bn": 0.3, "w_mhad": 10.0,
            "w_sfcl": 0.8, "tau": 0.5,     # choice: measured on the demo (the paper: 8, 0.07; docs/recipes.md)
            "conditional": False,  # the generator adds a learned embedding of the target class (on the
                                   # demo: 87.5% and 69.4% on seeds 0 and 1, against 95.3% and 81.2% without)
            "w_cls": 5.0,          # choice: class-coverage CE of the teacher on balanced targets (on the
                                   # demo, three seeds: at 1 it stays near chance and one seed fell to 69%)
            "w_adv": 1.0,          # choice: weight of the masked adversarial KL
            "T": 4.0,              # choice: KD temperature of the student
            "sfcl_positives": "class",  # class (teacher's class: SupCon) | image (the paper's)
            "pool_size": 2048,     # choice: synthesised images kept for the student
            "w_tv": 0.0,           # choice: total-variation image prior (DeepInversion's smoothness term)
            "gen_upsample": 1,     # choice: the generator draws at img_size / gen_upsample, upsampled
                                   # bilinearly (smooth images for patch models such as ViM)
            "gen_augment": True,   # choice: the generator's images reach teacher and student flipped and
                                   # shifted (DeepInversion's jitter): no pixel-exact adversarial patterns
            "prior": "auto",       # auto | bn | norm_stats | patch_entropy | none
            "norm_stats": None,    # path to recorded norm-input statistics (BN-free teachers)
            "sam_reduction": 8, "sam_lambda": 0.05, "proj_dim": 128,
        }},
        "train": {"record_norm_stats": False},  # classify: save the trained model's norm-input statistics
    }
    data_free = True
    ddp_ok = False

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        f = cfg["distill"]["dfkd"]
        one_of(f["prior"], ("auto", *PRIORS), "distill.dfkd.prior")
        one_of(f["sfcl_positives"], SFCL_POSITIVES, "distill.dfkd.sfcl_positives")
        for key in ("gen_steps", "student_steps", "pool_size", "gen_upsample"):
            check(isinstance(f[key], int) and f[key] >= 1,
                  f"config 'distill.dfkd.{key}' must be a positive integer, got {f[key]!r}")
        check(f["T"] > 0, f"config 'distill.dfkd.T' must be positive, got {f['T']!r}")

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__(cfg)
        f = cfg["distill"]["dfkd"]
        self.num_classes = num_classes or cfg["data"]["num_classes"]
        self.model = model_from_config(cfg, num_classes=num_classes)
        self.teacher = load_teacher(cfg, num_classes=num_classes)
        self.frozen = [self.teacher]
        size = cfg["data"]["img_size"]
        self.generator = AttentionGenerator(f["nz"], f["ngf"], size // f["gen_upsample"], f["sam_reduction"],
                                            f["sam_lambda"], self.num_classes if f["conditional"] else 0)
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=f["gen_lr"], betas=(0.5, 0.99))
        self.pool = ImagePool(f["pool_size"], (3, size, size))
        t_maps, s_maps = self._probe_maps(size)
        self.mhad = nn.ModuleList(MixedHighOrderAttention(t.shape[1]) for t in t_maps)
        self.adapters = nn.ModuleList(nn.Conv2d(s.shape[1], t.shape[1], 1) for s, t in zip(s_maps, t_maps))
        self.proj_t = projector(t_maps[-1].shape[1], f["proj_dim"])
        self.proj_s = projector(s_maps[-1].shape[1], f["proj_dim"])
        self.prior = build_prior(self.teacher, f)
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

    def _device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.generator(z, y if self.generator.embed is not None else None)
        up = self.cfg["distill"]["dfkd"]["gen_upsample"]
        return F.interpolate(x, scale_factor=up, mode="bilinear", align_corners=False) if up > 1 else x

    def synthesize(self, n: int) -> dict:
        """One synthesis round: ``gen_steps`` steps of the generator and a learnable noise batch for
        balanced class targets; the final images go into the pool."""
        f = self.cfg["distill"]["dfkd"]
        dev = self._device()
        y = balanced_targets(n, self.num_classes, dev)
        z = torch.randn(n, self.generator.nz, device=dev, requires_grad=True)
        z_opt = torch.optim.Adam([z], lr=f["gen_lr"], betas=(0.5, 0.99))
        params = [p for p in self.generator.parameters() if p.requires_grad]
        was = self.model.training
        self.model.eval()  # its BatchNorm statistics stay those of the pool images it trains on
        comps = {}
        try:
            for _ in range(f["gen_steps"]):
                x = self.generate(z, y)
                tv = losses.total_variation(x) if f["w_tv"] else x.new_zeros(())
                if f["gen_augment"]:
                    x = augment(x)
                t_logits = self.prior.teacher_logits(x)
                prior = self.prior.loss().to(dev)
                cls = F.cross_entropy(t_logits.float(), y)
                adv = losses.adversarial_kl(self.model(x), t_logits)
                loss = f["w_cls"] * cls + f["w_bn"] * prior + f["w_tv"] * tv - f["w_adv"] * adv
                grads = torch.autograd.grad(loss, params + [z])
                average_gradients(grads[:-1])
                for p, g in zip(params + [z], grads):
                    p.grad = g
                self.gen_opt.step()
                z_opt.step()
                self.gen_opt.zero_grad(set_to_none=True)
                comps = {"g_cls": cls.detach(), "g_prior": prior.detach(), "g_adv": adv.detach(), "g_tv": tv.detach()}
        finally:
            self.model.train(was)
        with torch.no_grad():
            self.pool.add(self.generate(z, y))
        return comps

    def forward(self, batch):
        f = self.cfg["distill"]["dfkd"]
        n = self.cfg["data"]["batch_size"]
        gen_comps = {}
        if self.cycle_pos == 0:
            gen_comps = self.synthesize(n)
        self.cycle_pos = (self.cycle_pos + 1) % f["student_steps"]
        x = augment(self.pool.sample(n).to(self._device()))
        with torch.no_grad():
            t_logits, t_maps = self.teacher.forward_intermediates(x, self.t_idx)
        s_logits, s_maps = self.model.forward_intermediates(x, self.s_idx)
        mh = mhad_loss(t_maps, s_maps, self.mhad, self.adapters) if f["w_mhad"] else t_logits.new_zeros(())
        sf = t_logits.new_zeros(())
        if f["w_sfcl"]:
            labels = t_logits.argmax(1) if f["sfcl_positives"] == "class" else None
            sf = losses.nt_xent(self.proj_t(pre_logits(t_maps[-1]).float()),
                                self.proj_s(pre_logits(s_maps[-1]).float()), f["tau"], labels)
        loss, comps = losses.dfkd_student(s_logits, t_logits, mh, sf, w_mhad=f["w_mhad"],
                                          w_sfcl=f["w_sfcl"], temperature=f["T"])
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
