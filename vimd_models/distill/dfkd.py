"""DFKD-FGVC building blocks: attention generator (SAM), mixed high-order attention (MHAD),
adapters, SFCL projectors, the synthesis pool and augmentation, and the data-free priors.

Choices not given by the paper: nz 256; SAM reduction r = 8; the SAM softmax runs over H*W and is
rescaled by H*W so the attention map averages 1; a BatchNorm after every up-convolution of the
generator (as in DAFL, DFAD, CMI and Fast-DFKD: without it the noise-dependent signal shrinks about
4x per block and every image of a batch comes out alike); the generator's Tanh output is mapped to
[0, 1] ((t + 1) / 2), the pixel range every model here takes; MHAD features are L2-normalised per
sample before the MSE (so the trainable attention cannot shrink the loss by scaling features down).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import UserError
from ..weights import read_checkpoint
from .losses import bn_stat_loss


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
    """z (B, nz) -> image (B, 3, S, S) in [0, 1]; S = 16 * init size (224 -> 14). Four blocks of
    spectral-norm up-convolution, BatchNorm, LeakyReLU and SAM. With ``num_classes`` it is
    class-conditional: ``forward(z, y)`` adds a learned embedding of the target class y to z.
    ``sam_lambda`` 0: no SAM at all (the paper's ablation baseline, a generator without attention)."""

    def __init__(self, nz: int = 256, ngf: int = 64, img_size: int = 224, sam_reduction: int = 8,
                 sam_lambda: float = 0.05, num_classes: int = 0):
        super().__init__()
        if img_size % 16:
            raise ValueError(f"img_size must be a multiple of 16, got {img_size}")
        self.nz, self.init = nz, img_size // 16
        self.embed = nn.Embedding(num_classes, nz) if num_classes else None
        chans = [8 * ngf, 4 * ngf, 2 * ngf, ngf, ngf]
        self.fc = nn.Linear(nz, chans[0] * self.init ** 2)
        self.bn0 = nn.BatchNorm2d(chans[0])
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [spectral_norm(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)),
                       nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True),
                       SAM(cout, sam_reduction, sam_lambda) if sam_lambda else nn.Identity()]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if (y is None) != (self.embed is None):
            raise ValueError("a class-conditional generator takes class targets y, an unconditional one none")
        if y is not None:
            z = z + self.embed(y)
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


def balanced_targets(n: int, num_classes: int, device=None) -> Tensor:
    """n class targets covering the classes as evenly as n allows, in random order."""
    return (torch.randperm(n, device=device) + torch.randint(num_classes, (1,)).item()) % num_classes


def augment(x: Tensor) -> Tensor:
    """Per image: a random crop of the image padded by size/8 on each side (reflection) and a
    horizontal flip with probability 1/2."""
    b, _, h, w = x.shape
    ph, pw = max(1, h // 8), max(1, w // 8)
    padded = F.pad(x, (pw, pw, ph, ph), mode="reflect")
    dy = torch.randint(0, 2 * ph + 1, (b,)).tolist()
    dx = torch.randint(0, 2 * pw + 1, (b,)).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    flip = torch.rand(b, device=x.device) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), out.flip(-1), out)


class ImagePool(nn.Module):
    """The last ``capacity`` synthesised images, kept as 8-bit pixels (so a checkpoint holds them
    exactly and small); students sample batches from it. Buffers: part of the task's state."""

    def __init__(self, capacity: int, shape: tuple[int, int, int]):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.register_buffer("images", torch.zeros(capacity, *shape, dtype=torch.uint8))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("next", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.filled)

    @torch.no_grad()
    def add(self, x: Tensor) -> None:
        cap = self.images.shape[0]
        x = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8)[-cap:]
        idx = (int(self.next) + torch.arange(x.shape[0])) % cap
        self.images[idx.to(self.images.device)] = x.to(self.images.device)
        self.next.fill_((int(self.next) + x.shape[0]) % cap)
        self.filled.fill_(min(cap, int(self.filled) + x.shape[0]))

    def sample(self, n: int) -> Tensor:
        if not len(self):
            raise RuntimeError("the image pool is empty")
        idx = torch.randint(len(self), (n,))
        return self.images[idx.to(self.images.device)].float() / 255

    def latest(self, n: int) -> Tensor:
        k = min(n, len(self))
        idx = (int(self.next) - 1 - torch.arange(k)) % self.images.shape[0]
        return self.images[idx.to(self.images.device)].float() / 255


def cls_position(model: nn.Module) -> int | None:
    """Index of the class token in the token sequences of ``model`` (a ViM), None for conv nets."""
    return next((int(m.cls_pos) for m in model.modules() if hasattr(m, "cls_pos")), None)


class StatHooks:
    """Forward hooks recording per-channel mean / biased variance of the inputs of matching layers,
    while ``recording`` is set (from the start).

    ``kind="bn"``: every BatchNorm layer, channels on dim 1 (reference: running stats);
    ``kind="norm"``: every other *Norm layer (RMSNorm, LayerNorm), channels on the last dim; with
    ``cls_pos`` the class token of (B, L, D) inputs gets statistics of its own (over the batch),
    apart from the patch tokens' (over batch and tokens).
    """

    def __init__(self, model: nn.Module, kind: str, cls_pos: int | None = None):
        if kind not in ("bn", "norm"):
            raise ValueError(f"kind must be 'bn' or 'norm', got {kind!r}")
        self.kind, self.cls_pos, self.handles, self.names = kind, cls_pos, [], []
        self.recording = True
        for name, mod in model.named_modules():
            if self._match(mod):
                self.names.append(name)
                self.handles.append(mod.register_forward_hook(self._hook(len(self.names) - 1)))
        self.current: dict[int, tuple] = {}

    def _match(self, mod: nn.Module) -> bool:
        is_bn = isinstance(mod, nn.modules.batchnorm._BatchNorm)
        if self.kind == "bn":
            return is_bn and mod.track_running_stats
        return not is_bn and type(mod).__name__.endswith("Norm") or isinstance(mod, nn.LayerNorm)

    def _hook(self, i: int):
        def hook(mod, inputs, output):
            if not self.recording:
                return
            x = inputs[0].float()
            if self.kind == "bn":
                dims = [d for d in range(x.ndim) if d != 1]
                self.current[i] = (x.mean(dims), x.var(dims, unbiased=False), mod)
                return
            cls = None
            if self.cls_pos is not None and x.ndim == 3:
                p = self.cls_pos
                cls = x[:, p]
                x = torch.cat((x[:, :p], x[:, p + 1:]), dim=1)
            dims = list(range(x.ndim - 1))
            stats = (x.mean(dims), x.var(dims, unbiased=False))
            if cls is not None:
                stats += (cls.mean(0), cls.var(0, unbiased=False))
            self.current[i] = stats
        return hook

    def pop(self) -> dict[int, tuple]:
        cur, self.current = self.current, {}
        return cur

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def gaussian_kl(mean: Tensor, var: Tensor, ref_mean: Tensor, ref_var: Tensor, eps: float = 1e-5) -> Tensor:
    """Mean over channels of KL(N(mean, var) || N(ref_mean, ref_var)): scale-free (the same for a
    channel of variance 1e-4 and one of 1e4 that are equally far off in their own units)."""
    v, rv = var + eps, ref_var + eps
    return 0.5 * (torch.log(rv / v) + (v + (mean - ref_mean) ** 2) / rv - 1).mean()


def patch_similarity_entropy(tokens: Tensor, bins: int = 64, bandwidth: float = 0.05,
                             max_pairs: int = 2048) -> Tensor:
    """PSAQ-ViT's prior for BN-free vision transformers (Li et al. 2022): the differential entropy
    of the distribution of cosine similarities between a sample's patch tokens (Gaussian kernel
    density on ``bins`` points over [-1, 1]), averaged over the batch. Real images give diverse
    similarities (high entropy), noise uniform ones. At most ``max_pairs`` token pairs per sample
    (evenly spaced) enter the estimate."""
    t = F.normalize(tokens.float(), dim=-1)
    L = t.shape[1]
    iu = torch.triu_indices(L, L, 1, device=t.device)
    if iu.shape[1] > max_pairs:
        iu = iu[:, torch.linspace(0, iu.shape[1] - 1, max_pairs, device=t.device).long()]
    sim = (t[:, iu[0]] * t[:, iu[1]]).sum(-1)                       # (B, pairs)
    grid = torch.linspace(-1, 1, bins, device=t.device)
    dens = torch.exp(-0.5 * ((grid.view(1, -1, 1) - sim.unsqueeze(1)) / bandwidth) ** 2).mean(-1)
    p = dens / dens.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(p * p.clamp_min(1e-12).log()).sum(-1).mean()


class Prior:
    """A data-free prior on the teacher: ``teacher_logits(x)`` runs the teacher on generated
    images and keeps what the prior needs; ``loss()`` is then the prior's term (to minimise)."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher

    def teacher_logits(self, x: Tensor) -> Tensor:
        return self.teacher(x)

    def loss(self) -> Tensor:
        raise NotImplementedError


class NoPrior(Prior):
    def loss(self) -> Tensor:
        return torch.zeros(())


class HookedPrior(Prior):
    """A prior on statistics that forward hooks (``self.hooks``, a StatHooks) record on the teacher,
    only while ``teacher_logits`` runs it."""

    hooks: StatHooks

    def teacher_logits(self, x: Tensor) -> Tensor:
        self.hooks.recording = True
        try:
            return self.teacher(x)
        finally:
            self.hooks.recording = False


class BNPrior(HookedPrior):
    """DeepInversion's: sum over BatchNorm layers of the L2 distances of the batch's per-channel
    input mean and variance to the layer's running statistics."""

    def __init__(self, teacher: nn.Module, f: dict):
        super().__init__(teacher)
        if not has_batchnorm(teacher):
            raise UserError("config 'distill.dfkd.prior' = bn but the teacher has no BatchNorm layers; "
                            "use norm_stats (statistics recorded during teacher training) or patch_entropy")
        self.hooks = StatHooks(teacher, "bn")
        self.hooks.recording = False

    def loss(self) -> Tensor:
        stats = [(m, v, mod.running_mean.float(), mod.running_var.float())
                 for _, (m, v, mod) in sorted(self.hooks.pop().items())]
        return bn_stat_loss(stats)


class NormStatsPrior(HookedPrior):
    """For BN-free teachers (ViM): per-channel Gaussian KL of the norm layers' input statistics to
    those recorded on the teacher's training data (``record_norm_stats``), averaged over channels
    and over layers, the class token's statistics apart from the patch tokens'."""

    def __init__(self, teacher: nn.Module, f: dict):
        super().__init__(teacher)
        path = f["norm_stats"]
        if not path:
            raise UserError("config 'distill.dfkd.norm_stats' must point to the teacher's norm_stats.safetensors")
        try:
            ref = read_checkpoint(path)
        except (ValueError, FileNotFoundError) as e:
            raise UserError(f"config 'distill.dfkd.norm_stats': {e}") from None
        self.hooks = StatHooks(teacher, "norm", cls_position(teacher))
        self.hooks.recording = False
        keys = ("mean", "var") + (("cls_mean", "cls_var") if self.hooks.cls_pos is not None else ())
        missing = [n for n in self.hooks.names if any(f"{n}.{k}" not in ref for k in keys)]
        if missing:
            raise UserError(f"{path} has no statistics ({', '.join(keys)}) for teacher layers {missing[:3]}; "
                            "record them again (train.record_norm_stats)")
        self.ref = [tuple(ref[f"{n}.{k}"] for k in keys) for n in self.hooks.names]

    def loss(self) -> Tensor:
        terms = []
        for i, stats in sorted(self.hooks.pop().items()):
            ref = [r.to(stats[0].device) for r in self.ref[i]]
            terms.append(gaussian_kl(stats[0], stats[1], ref[0], ref[1]))
            if len(stats) == 4:
                terms.append(gaussian_kl(stats[2], stats[3], ref[2], ref[3]))
        if not terms:
            raise ValueError("no statistics were recorded (the teacher has no matching layers)")
        return torch.stack(terms).mean()


class PatchEntropyPrior(Prior):
    """PSAQ-ViT's patch-similarity entropy, maximised (loss = minus the entropy summed over the
    teacher's blocks), for token models with ``forward_intermediates``."""

    def __init__(self, teacher: nn.Module, f: dict):
        super().__init__(teacher)
        self.cls_pos = cls_position(teacher)
        if self.cls_pos is None or not hasattr(teacher, "forward_intermediates"):
            raise UserError("config 'distill.dfkd.prior' = patch_entropy needs a token model (ViM) as teacher")
        self.feats: list[Tensor] = []

    def teacher_logits(self, x: Tensor) -> Tensor:
        logits, feats = self.teacher.forward_intermediates(x)
        p = self.cls_pos
        self.feats = [torch.cat((t[:, :p], t[:, p + 1:]), dim=1) for t in feats]
        return logits

    def loss(self) -> Tensor:
        feats, self.feats = self.feats, []
        return -sum(patch_similarity_entropy(t) for t in feats)


# distill.dfkd.prior -> class(teacher, dfkd config)
PRIORS = {"bn": BNPrior, "norm_stats": NormStatsPrior, "patch_entropy": PatchEntropyPrior,
          "none": lambda teacher, f: NoPrior(teacher)}


def build_prior(teacher: nn.Module, f: dict) -> Prior:
    """The data-free prior named by ``f["prior"]``; "auto": bn for a BatchNorm teacher, else
    norm_stats when statistics were given, else patch_entropy for a token model, else none."""
    prior = f["prior"]
    if prior == "auto":
        if has_batchnorm(teacher):
            prior = "bn"
        elif f["norm_stats"]:
            prior = "norm_stats"
        else:
            prior = "patch_entropy" if cls_position(teacher) is not None else "none"
    return PRIORS[prior](teacher, f)


@torch.no_grad()
def record_norm_stats(model: nn.Module, batches) -> dict[str, Tensor]:
    """Mean over batches of the per-channel input mean / variance of every non-BN norm layer of
    ``model`` (the data-free prior for BN-free teachers); for a ViM the class token's separately.
    Returns {'<layer>.mean': t, '<layer>.var': t[, '<layer>.cls_mean': t, '<layer>.cls_var': t]}."""
    hooks = StatHooks(model, "norm", cls_position(model))
    if not hooks.names:
        hooks.remove()
        raise ValueError("the model has no normalisation layers to record")
    keys = ("mean", "var", "cls_mean", "cls_var")
    sums: dict[int, list] = {}
    n = 0
    try:
        for x in batches:
            model(x)
            for i, stats in hooks.pop().items():
                s = sums.setdefault(i, [0] * len(stats))
                for j, t in enumerate(stats):
                    s[j] = s[j] + t
            n += 1
    finally:
        hooks.remove()
    return {f"{hooks.names[i]}.{k}": t / n for i, s in sums.items() for k, t in zip(keys, s)}
