"""Distillation losses, in a registry; each returns (total, {component name: detached value}).

- ``vimd``: CE(label smoothing) + alpha * (L_LD + beta * L_HSD)   (ViMD, seed 000)
- ``sr_kd``: L1(S, HR) + lam * L1(S, T)                              (DVMSR, seed 001)
- ``dfkd_student``: L_KD + w_mhad * L_MHAD + w_sfcl * L_SFCL        (DFKD-FGVC, seed 002)
plus the building blocks (Hinton KD, hidden-state MSE, BN-statistics prior, NT-Xent).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES: dict[str, Callable] = {}


def register_loss(fn: Callable) -> Callable:
    LOSSES[fn.__name__] = fn
    return fn


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: KL(teacher || student) of temperature-softened outputs, batchmean, times T^2."""
    t = float(temperature)
    log_p = F.log_softmax(student_logits.float() / t, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


def hidden_state_mse(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """L_HSD: sum over the tapped layers of MSE(H_i^teacher, H_i^student)."""
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"student and teacher give {len(student_feats)} and {len(teacher_feats)} feature maps")
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_feats, teacher_feats):
        if s.shape != t.shape:
            raise ValueError(f"hidden states differ in shape: student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
        total = total + F.mse_loss(s.float(), t.float())
    return total


@register_loss
def vimd(student_logits: Tensor, target: Tensor, teacher_logits: Tensor | None,
         student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], *, alpha: float, beta: float,
         temperature: float, label_smoothing: float, use_ld: bool = True):
    """L = CE + alpha * (L_LD + beta * L_HSD); alpha = 0 gives the CE-only baseline."""
    ce = F.cross_entropy(student_logits.float(), target, label_smoothing=label_smoothing)
    comps = {"ce": ce}
    total = ce
    if alpha:
        ld = kd_kl(student_logits, teacher_logits, temperature) if use_ld else ce.new_zeros(())
        hsd = hidden_state_mse(student_feats, teacher_feats) if beta else ce.new_zeros(())
        total = ce + alpha * (ld + beta * hsd)
        comps.update(ld=ld, hsd=hsd)
    return total, {k: v.detach() for k, v in comps.items()}


@register_loss
def sr_kd(sr: Tensor, hr: Tensor, teacher_sr: Tensor | None = None, *, lam: float = 1.0):
    """L1(S(x), HR) + lam * L1(S(x), T(x)); without a teacher it is plain L1."""
    l1 = F.l1_loss(sr.float(), hr.float())
    comps = {"l1": l1}
    total = l1
    if teacher_sr is not None and lam:
        kd = F.l1_loss(sr.float(), teacher_sr.float())
        total = l1 + lam * kd
        comps["kd"] = kd
    return total, {k: v.detach() for k, v in comps.items()}


def bn_stat_loss(stats: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]]) -> Tensor:
    """Sum over layers of ||batch mean - running mean||_2 + ||batch var - running var||_2."""
    total = None
    for mean, var, rmean, rvar in stats:
        term = torch.linalg.vector_norm(mean - rmean) + torch.linalg.vector_norm(var - rvar)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no statistics were recorded (the teacher has no matching layers)")
    return total


def nt_xent(za: Tensor, zb: Tensor, tau: float, labels: Tensor | None = None) -> Tensor:
    """Symmetric NT-Xent over the 2B rows of [za; zb]. Without ``labels``, (za[i], zb[i]) are the
    positives and every other row a negative (SimCLR); with ``labels`` (B,), every other row of the
    same label is a positive (supervised contrastive, Khosla et al. 2020), the loss averaged over
    each row's positives."""
    z = F.normalize(torch.cat([za, zb]).float(), dim=1)
    n = za.shape[0]
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = (z @ z.t() / tau).masked_fill(self_mask, float("-inf"))
    if labels is None:
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(sim, target)
    lab = torch.cat([labels, labels])
    pos = (lab.view(-1, 1) == lab.view(1, -1)) & ~self_mask
    log_p = F.log_softmax(sim, dim=1).masked_fill(~pos, 0.0)
    return -(log_p.sum(1) / pos.sum(1)).mean()


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels (both directions) of images (B, C, H, W)."""
    x = x.float()
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def adversarial_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """The generator's adversarial term (as in CMI and Fast-DFKD): KL(teacher || student) per
    sample, counted only where student and teacher agree on the class (so the generator is not
    pushed further on images the student already gets wrong), averaged over the batch."""
    log_p = F.log_softmax(student_logits.float(), dim=1)
    log_q = F.log_softmax(teacher_logits.float(), dim=1)
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(1)
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
    return (kl * agree).mean()


@register_loss
def dfkd_student(student_logits: Tensor, teacher_logits: Tensor, mhad: Tensor, sfcl: Tensor, *,
                 w_mhad: float, w_sfcl: float, temperature: float = 1.0):
    """DFKD-FGVC student objective: L_KD (at ``temperature``) + w_mhad * L_MHAD + w_sfcl * L_SFCL."""
    kd = kd_kl(student_logits, teacher_logits, temperature)
    total = kd + w_mhad * mhad + w_sfcl * sfcl
    return total, {"kd": kd.detach(), "mhad": mhad.detach(), "sfcl": sfcl.detach()}
