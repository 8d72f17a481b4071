"""One task object per training method, so one engine trains them all.

A task is an ``nn.Module`` holding the trained model (``self.model``), any frozen teacher and any
trainable auxiliary modules; ``forward(batch) -> (loss, {component: value})``. Each task class is
registered in ``TASKS`` under its config name (``task: ...``) and declares, as class attributes,
what the engine needs before the task exists: its ``kind`` ("classify" / "sr": the data form, the
evaluation and its metrics), the classification ``views`` it trains and evaluates on (see
vimd_models.data) and whether it is ``data_free``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import load_into, load_optimizer_state, load_weights
from ..finetune import load_release
from ..errors import UserError
from ..registry import create_model
from . import losses
from .dfkd import AttentionGenerator, MixedHighOrderAttention, as_map, build_prior, mhad_loss, pre_logits, projector

TASKS: dict[str, type[Task]] = {}


def register_task(name: str):
    """Class decorator: ``TASKS[name] = cls``; ``name`` is the config's ``task`` value."""
    def deco(cls):
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered ({TASKS[name].__name__})")
        cls.name = name
        TASKS[name] = cls
        return cls
    return deco


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise UserError(f"config 'task': unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def build_task(cfg: dict, num_classes: int | None = None) -> Task:
    """The task named by ``cfg["task"]``; ``num_classes`` comes from the data (classification kinds)."""
    return task_class(cfg["task"])(cfg, num_classes)


def create(spec: dict, cfg: dict, what: str, **extra) -> nn.Module:
    """create_model from a config section {name, kwargs}; config mistakes become UserErrors."""
    kwargs = {**extra, **(spec.get("kwargs") or {})}
    for k, v in extra.items():
        if k in (spec.get("kwargs") or {}) and spec["kwargs"][k] != v:
            raise UserError(f"config '{what}.kwargs.{k}' = {spec['kwargs'][k]!r} disagrees with the data ({v!r})")
    if not spec.get("name"):
        raise UserError(f"config '{what}.name' must name a registered model")
    try:
        return create_model(spec["name"], backend=cfg["backend"], **kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"config '{what}': {e}") from None


def freeze(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()


def load_teacher(cfg: dict, **extra) -> nn.Module:
    t = cfg["teacher"]
    model = create(t, cfg, "teacher", **extra)
    if not t.get("checkpoint"):
        raise UserError(f"config 'teacher.checkpoint' must point to the trained {t['name']} weights")
    load_into(model, load_weights(t["checkpoint"]), t["checkpoint"])
    return freeze(model)


class Task(nn.Module):
    """Base task. Class attributes:

    kind: "classify" (loaders yield views + label; top-1 / top-5) or "sr" ((lr, hr) pairs; PSNR / SSIM);
    train_views / eval_views: the classification views, "hr", "lr" or "hr_lr" (read through ``views``);
    data_free: no training set, the task makes its own inputs (``train.steps_per_epoch`` sets the epoch);
    records_norm_stats: ``train.record_norm_stats`` saves the trained model's norm-input statistics;
    ddp_ok: False when the engine must all-reduce gradients itself (tasks with inner optimisers).
    """
    name = ""  # set by register_task
    kind = "classify"
    train_views = "hr"
    eval_views = "hr"
    data_free = False
    records_norm_stats = False
    ddp_ok = True

    @classmethod
    def views(cls, cfg: dict) -> tuple[str, str]:
        """(train view, evaluation view) of the classification loaders."""
        return cls.train_views, cls.eval_views

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.frozen: list[nn.Module] = []

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    @staticmethod
    def batch_size(batch) -> int:
        return int(batch[0].shape[0])


@register_task("classify")
class ClassifyTask(Task):
    """Supervised classifier (HRVM-Net teacher, ResNet-34, ...): CE with label smoothing. Trains and
    evaluates on ``data.views`` (one view: hr_lr is read as hr)."""
    records_norm_stats = True

    @classmethod
    def views(cls, cfg: dict) -> tuple[str, str]:
        v = cfg["data"]["views"] if cfg["data"]["views"] != "hr_lr" else "hr"
        return v, v

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__(cfg)
        self.model = create(cfg["model"], cfg, "model", num_classes=num_classes)

    def forward(self, batch):
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x).float(), y, label_smoothing=self.cfg["distill"]["label_smoothing"])
        return loss, {"ce": loss.detach()}


@register_task("sr")
class SRTask(Task):
    """SR training (SRResNet, DVMSR): L1 on (lr, hr) pairs."""
    kind = "sr"
    train_views = eval_views = None  # SR data has one form: (lr, hr) pairs

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__(cfg)
        self.model = create(cfg["model"], cfg, "model")

    def forward(self, batch):
        lr, hr = batch
        return losses.sr_kd(self.model(lr), hr)


@register_task("dvmsr_kd")
class DVMSRKDTask(SRTask):
    """DVMSR student with the teacher's output as extra supervision: L1(S, HR) + lam * L1(S, T)."""

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__(cfg)
        self.teacher = load_teacher(cfg)
        self.frozen = [self.teacher]

    def forward(self, batch):
        lr, hr = batch
        with torch.no_grad():
            t = self.teacher(lr)
        return losses.sr_kd(self.model(lr), hr, t, lam=self.cfg["distill"]["lam"])


def _hsd_indices(spec) -> list[int] | None:
    if spec == "all":
        return None
    if spec == "last":
        return [-1]
    return list(spec)


@register_task("vimd")
class ViMDTask(Task):
    """SRVM-Net student on LR, frozen HRVM-Net teacher on HR: CE + alpha * (L_LD + beta * L_HSD)."""
    train_views = "hr_lr"
    eval_views = "lr"

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__(cfg)
        self.model = create(cfg["model"], cfg, "model", num_classes=num_classes)
        sr_ckpt = cfg["model"].get("sr_checkpoint")
        sr = getattr(self.model, "sr", None)
        if sr_ckpt:
            if sr is None:
                raise UserError(f"config 'model.sr_checkpoint': model {cfg['model']['name']} has no SR sub-network")
            load_release(sr, sr_ckpt, "model.sr_checkpoint", "point it at an SR network trained here "
                         "(configs/srresnet_div2k.yaml)", require_all=True)
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


def _evenly(n: int, k: int) -> list[int]:
    return [round((i + 1) * n / k) - 1 for i in range(k)]


@register_task("dfkd")
class DFKDTask(Task):
    """DFKD-FGVC: adversarial data-free distillation; every cycle = gen_steps generator steps
    (w_bn * prior - L_KD) then student_steps student steps (L_KD + w_mhad L_MHAD + w_sfcl L_SFCL).
    One engine step is one student step; the generator steps run at the start of each cycle."""
    data_free = True
    ddp_ok = False

    def __init__(self, cfg: dict, num_classes: int | None = None):
        super().__init__(cfg)
        f = cfg["distill"]["dfkd"]
        self.model = create(cfg["model"], cfg, "model", num_classes=num_classes)
        self.teacher = load_teacher(cfg, num_classes=num_classes)
        self.frozen = [self.teacher]
        size = cfg["data"]["img_size"]
        self.generator = AttentionGenerator(f["nz"], f["ngf"], size, f["sam_reduction"], f["sam_lambda"])
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=f["gen_lr"], betas=(0.5, 0.99))
        probe = torch.rand(2, 3, size, size)
        with torch.no_grad():
            n_t = len(self.teacher.forward_intermediates(probe)[1])
            was = self.model.training
            self.model.eval()
            n_s = len(self.model.forward_intermediates(probe)[1])
            self.model.train(was)
            k = min(4, n_t, n_s)
            self.t_idx, self.s_idx = _evenly(n_t, k), _evenly(n_s, k)
            t_maps = [as_map(m) for m in self.teacher.forward_intermediates(probe, self.t_idx)[1]]
            self.model.eval()
            s_maps = [as_map(m) for m in self.model.forward_intermediates(probe, self.s_idx)[1]]
            self.model.train(was)
        self.mhad = nn.ModuleList(MixedHighOrderAttention(t.shape[1]) for t in t_maps)
        self.adapters = nn.ModuleList(nn.Conv2d(s.shape[1], t.shape[1], 1) for s, t in zip(s_maps, t_maps))
        self.proj_t = projector(t_maps[-1].shape[1], f["proj_dim"])
        self.proj_s = projector(s_maps[-1].shape[1], f["proj_dim"])
        self.prior, self.ref_stats = build_prior(self.teacher, f)
        self.cycle_pos = 0

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
            if dist.is_available() and dist.is_initialized():
                world = dist.get_world_size()
                for g in grads:
                    dist.all_reduce(g)
                    g.div_(world)
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
