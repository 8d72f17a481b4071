"""Workload registry: the real shapes the kernels run in ViM, DVMSR and MambaIR.

A workload fixes the scan geometry (batch, channels, L, N, B/C layout).  Mixer ops
(mamba_inner / bimamba_inner) read it as xz = (batch, 2*d_inner, L) with d_model = d_inner / 2.
Batch sizes: GPU defaults are 128 at stride 16 and 32 at stride 8 (same token count per batch);
CPU defaults are 8 (the cpu preset's row).  ``--batch`` overrides both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    name: str
    d_inner: int           # channels of the scan (for grouped scans: routes * per-route channels)
    L: int
    N: int = 16
    groups: int = 0        # 0: variable B/C (batch, N, L); G > 0: grouped (batch, G, N, L)
    gpu_batch: int = 1
    cpu_batch: int = 1
    note: str = ""

    @property
    def d_model(self) -> int:
        return max(1, self.d_inner // 2)

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.d_model / 16)

    def batch(self, device: str, override: int | None = None) -> int:
        if override:
            return override
        return self.gpu_batch if device == "cuda" else self.cpu_batch


def _vim(size: str, d_inner: int) -> list[Workload]:
    return [Workload(f"vim-{size}-s16", d_inner, 197, gpu_batch=128, cpu_batch=8,
                     note=f"Vim-{size} stride 16 (224 px, 196 patches + cls)"),
            Workload(f"vim-{size}-s8", d_inner, 730, gpu_batch=32, cpu_batch=8,
                     note=f"Vim-{size} stride 8 (224 px, 729 patches + cls)")]


_ALL = (
    _vim("ti", 384) + _vim("s", 768) + _vim("b", 1536)
    + [Workload("cpu-row", 384, 197, gpu_batch=8, cpu_batch=8,
                note="ViM-Ti stride 16 at batch 8 on the CPU: u = (8, 384, 197)")]
    + [Workload(f"dvmsr-{side}", 120, side * side, note=f"DVMSR ViMM at {side}x{side} LR (d_inner 120)")
       for side in (64, 128, 256)]
    + [Workload(f"mambair-{c}-{side}", 4 * 2 * c, side * side, groups=4,
                note=f"MambaIR 4-route 2-D scan, C={c} (d_inner {2 * c} x 4 routes), {side}x{side}")
       for c, side in ((60, 64), (180, 64))]
    + [Workload(f"vim-ti-s16-n{N}", 384, 197, N=N, gpu_batch=128, cpu_batch=8,
                note=f"Vim-Ti stride 16 with d_state {N} (mamba_ssm's range; cuda: passes over 64-state slices)")
       for N in (128, 256)]
    + [Workload("tiny", 8, 33, N=4, gpu_batch=2, cpu_batch=2, note="smoke test (--quick)"),
       Workload("tiny-grouped", 8, 33, N=4, groups=4, gpu_batch=2, cpu_batch=2,
                note="smoke test, grouped B/C")]
)

WORKLOADS: dict[str, Workload] = {w.name: w for w in _ALL}

DEFAULTS = {
    "cuda": ["vim-ti-s16", "vim-ti-s8", "vim-s-s16", "vim-s-s8", "vim-b-s16", "vim-b-s8",
             "dvmsr-64", "dvmsr-128", "dvmsr-256", "mambair-60-64", "mambair-180-64", "vim-ti-s16-n128",
             "vim-ti-s16-n256"],
    "cpu": ["cpu-row", "vim-ti-s8", "dvmsr-64", "mambair-60-64"],
}

QUICK = ["tiny"]


def get(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(WORKLOADS)}") from None

