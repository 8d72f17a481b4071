"""DFKD-FGVC building blocks: attention generator (SAM), mixed high-order attention (MHAD),
adapters, SFCL projectors, and the statistics hooks behind the data-free priors.

Choices not given by the paper: nz 256; SAM reduction r = 8; the SAM softmax runs
over H*W and is rescaled by H*W so the attention map averages 1; the generator's Tanh output is mapped
to [0, 1] ((t + 1) / 2), the pixel range every model here takes; MHAD features are L2-normalised per
sample before the MSE (so the trainable attention cannot shrink the loss by scaling features down).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import UserError
from ..weights import read_checkpoint


class SAM(nn.Module):
    """Spatial attention module: F' = lam * (softmax_HW(A) * HW) * F + F."""

    def __init__(self, c: int, r: int = 8, lam: float = 0.05):
        super().__init__()
        m = max(1, c // r)
        self.lam = lam
        self.reduce = nn.Conv2d(c, m, 1)
        self.enc1 = nn.Sequential(nn.Conv2d(m, 2 * m, 3, padding=1), nn.BatchNorm2d(2 * m), nn.ReLU(True))
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.enc2 = nn.Sequential(nn.Conv2d(2 * m, 4 * m, 3, padding=1), nn.BatchNorm2d(4 * m), nn.ReLU(True))
        self.dec2 = nn.Sequential(nn.ConvTranspose2d(4 * m, 2 * m, 3, padding=1), nn.BatchNorm2d(2 * m), nn.ReLU(True))
        self.unpool = nn.MaxUnpool2d(2)
        self.dec1 = nn.Sequential(nn.ConvTranspose2d(2 * m, m, 3, padding=1), nn.BatchNorm2d(m), nn.ReLU(True))
        self.expand = nn.Conv2d(m, c, 1)

    def forward(self, f: Tensor) -> Tensor:
        a = self.enc1(self.reduce(f))
        size = a.shape
        a, idx = self.pool(a)
        a = self.dec2(self.enc2(a))
        a = self.dec1(self.unpool(a, idx, output_size=size))
        a = self.expand(a)
        b, c, h, w = a.shape
        att = torch.softmax(a.flatten(2), dim=-1).view(b, c, h, w) * (h * w)
        return self.lam * att * f + f


class AttentionGenerator(nn.Module):
    """z (B, nz) -> image (B, 3, S, S) in [0, 1]; S = 16 * init size (224 -> 14).
    ``sam_lambda`` 0: no SAM at all (the paper's ablation baseline, a generator without attention)."""

    def __init__(self, nz: int = 256, ngf: int = 64, img_size: int = 224, sam_reduction: int = 8,
                 sam_lambda: float = 0.05):
        super().__init__()
        if img_size % 16:
            raise ValueError(f"img_size must be a multiple of 16, got {img_size}")
        self.nz, self.init = nz, img_size // 16
        chans = [8 * ngf, 4 * ngf, 2 * ngf, ngf, ngf]
        self.fc = nn.Linear(nz, chans[0] * self.init ** 2)
        self.bn0 = nn.BatchNorm2d(chans[0])
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [spectral_norm(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)),
                       nn.LeakyReLU(0.2, True), SAM(cout, sam_reduction, sam_lambda) if sam_lambda else nn.Identity()]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.bn0(self.fc(z).view(z.shape[0], -1, self.init, self.init))
        return (torch.tanh(self.out(self.blocks(x))) + 1) / 2


class MixedHighOrderAttention(nn.Module):
    """Order-R attention: a_r = ReLU(prod of r 1x1 convs C->C/4), m_r = sigmoid(1x1 C/4->C);
    F' = F * mean_r m_r."""

    def __init__(self, c: int, order: int = 3):
        super().__init__()
        m = max(1, c // 4)
        self.proj = nn.ModuleList(nn.ModuleList(nn.Conv2d(c, m, 1) for _ in range(r)) for r in range(1, order + 1))
        self.gate = nn.ModuleList(nn.Conv2d(m, c, 1) for _ in range(order))

    def forward(self, f: Tensor) -> Tensor:
        att = 0
        for convs, gate in zip(self.proj, self.gate):
            a = convs[0](f)
            for conv in convs[1:]:
                a = a * conv(f)
            att = att + torch.sigmoid(gate(F.relu(a)))
        return f * (att / len(self.gate))


def as_map(f: Tensor) -> Tensor:
    """Feature -> (B, C, H, W): conv maps pass; token sequences (B, L, D) become (B, D, L, 1)."""
    if f.ndim == 4:
        return f
    if f.ndim == 3:
        return f.transpose(1, 2).unsqueeze(-1)
    raise ValueError(f"expected a (B, C, H, W) map or (B, L, D) tokens, got shape {tuple(f.shape)}")


def pre_logits(f: Tensor) -> Tensor:
    """Penultimate feature from the last tap: global average of a map, middle token of a sequence."""
    return f.mean(dim=(2, 3)) if f.ndim == 4 else f[:, f.shape[1] // 2]


def mhad_loss(t_maps, s_maps, mhad: nn.ModuleList, adapters: nn.ModuleList) -> Tensor:
    """Sum over stages of MSE(MHA(T), MHA(adapter(S))) on per-sample L2-normalised features."""
    total = 0
    for t, s, att, ad in zip(t_maps, s_maps, mhad, adapters):
        t, s = as_map(t).float(), ad(as_map(s).float())
        if s.shape[-2:] != t.shape[-2:]:
            s = F.adaptive_avg_pool2d(s, t.shape[-2:])
        ft, fs = att(t).flatten(1), att(s).flatten(1)
        total = total + F.mse_loss(F.normalize(fs, dim=1), F.normalize(ft, dim=1)) * ft.shape[1]
    return total


def projector(c: int, dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(c, c), nn.ReLU(True), nn.Linear(c, dim))


class StatHooks:
    """Forward hooks recording per-channel mean / biased variance of the inputs of matching layers.

    ``kind="bn"``: every BatchNorm layer, channels on dim 1 (reference: running stats);
    ``kind="norm"``: every other *Norm layer (RMSNorm, LayerNorm), channels on the last dim.
    """

    def __init__(self, model: nn.Module, kind: str):
        if kind not in ("bn", "norm"):
            raise ValueError(f"kind must be 'bn' or 'norm', got {kind!r}")
        self.kind, self.stats, self.handles, self.names = kind, [], [], []
        for name, mod in model.named_modules():
            if self._match(mod):
                self.names.append(name)
                self.handles.append(mod.register_forward_hook(self._hook(len(self.names) - 1)))
        self.current: dict[int, tuple[Tensor, Tensor, nn.Module]] = {}

    def _match(self, mod: nn.Module) -> bool:
        is_bn = isinstance(mod, nn.modules.batchnorm._BatchNorm)
        if self.kind == "bn":
            return is_bn and mod.track_running_stats
        return not is_bn and type(mod).__name__.endswith("Norm") or isinstance(mod, nn.LayerNorm)

    def _hook(self, i: int):
        def hook(mod, inputs, output):
            x = inputs[0].float()
            if self.kind == "bn":
                dims = [d for d in range(x.ndim) if d != 1]
            else:
                dims = list(range(x.ndim - 1))
            self.current[i] = (x.mean(dims), x.var(dims, unbiased=False), mod)
        return hook

    def pop(self) -> dict[int, tuple[Tensor, Tensor, nn.Module]]:
        cur, self.current = self.current, {}
        return cur

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _bn_prior(teacher: nn.Module, f: dict):
    if not has_batchnorm(teacher):
        raise UserError("config 'distill.dfkd.prior' = bn but the teacher has no BatchNorm layers; "
                        "use norm_stats with statistics recorded during teacher training")
    return StatHooks(teacher, "bn"), None


def _norm_stats_prior(teacher: nn.Module, f: dict):
    if not f["norm_stats"]:
        raise UserError("config 'distill.dfkd.norm_stats' must point to the teacher's norm_stats.safetensors")
    try:
        ref = read_checkpoint(f["norm_stats"])
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"config 'distill.dfkd.norm_stats': {e}") from None
    hooks = StatHooks(teacher, "norm")
    missing = [n for n in hooks.names if f"{n}.mean" not in ref]
    if missing:
        raise UserError(f"{f['norm_stats']} has no statistics for teacher layers {missing[:3]}")
    return hooks, [(ref[f"{n}.mean"], ref[f"{n}.var"]) for n in hooks.names]


def _no_prior(teacher: nn.Module, f: dict):
    return None, None


# distill.dfkd.prior -> (teacher, dfkd config) -> (StatHooks on the teacher or None, reference
# (mean, var) per hooked layer, or None for the BatchNorm running statistics)
PRIORS = {"bn": _bn_prior, "norm_stats": _norm_stats_prior, "none": _no_prior}


def build_prior(teacher: nn.Module, f: dict):
    """The data-free prior named by ``f["prior"]``; "auto": bn for a BatchNorm teacher, else
    norm_stats when statistics were given, else none."""
    prior = f["prior"]
    if prior == "auto":
        prior = "bn" if has_batchnorm(teacher) else ("norm_stats" if f["norm_stats"] else "none")
    return PRIORS[prior](teacher, f)


@torch.no_grad()
def record_norm_stats(model: nn.Module, batches) -> dict[str, Tensor]:
    """Mean over batches of per-channel input mean / variance of every non-BN norm layer of ``model``
    (the data-free prior for BN-free teachers). Returns {'<layer>.mean': t, '<layer>.var': t}."""
    hooks = StatHooks(model, "norm")
    if not hooks.names:
        hooks.remove()
        raise ValueError("the model has no normalisation layers to record")
    sums: dict[int, list] = {}
    n = 0
    try:
        for x in batches:
            model(x)
            for i, (m, v, _) in hooks.pop().items():
                s = sums.setdefault(i, [0, 0])
                s[0], s[1] = s[0] + m, s[1] + v
            n += 1
    finally:
        hooks.remove()
    out = {}
    for i, (m, v) in sums.items():
        out[f"{hooks.names[i]}.mean"] = m / n
        out[f"{hooks.names[i]}.var"] = v / n
    return out
