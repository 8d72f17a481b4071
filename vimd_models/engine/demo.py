"""``vimd demo``: the whole pipeline on the synthetic fine-grained data, no data on disk.

1. a small HRVM teacher (ViM) on HR 64x64 images;
2. a small DVMSR (x4) with L1, a larger DVMSR teacher, and the small DVMSR with teacher distillation;
3. the SRVM student (frozen small DVMSR -> ViM) on LR 16x16, CE only and with the ViMD loss;
then a results table (accuracy or PSNR/SSIM, params, FLOPs, images/s, backend), results.csv/.md
and plots. The effect of distillation is whatever was measured, reported with the seeds used.
``scale`` multiplies the epochs and data sizes (scale < 1 for a quick smoke run).
"""
from __future__ import annotations

import csv
import os
import time

import torch

from ..configs import CONFIG_DIR
from ..distill.tasks import create, task_class
from .config import load_config
from .trainer import train


def _sized(cfg_name: str, scale: float, extra: list[str]) -> dict:
    cfg = load_config(os.path.join(CONFIG_DIR, cfg_name), extra)
    d, t = cfg["data"], cfg["train"]
    d["train_size"] = max(d["batch_size"] * 2, int(d["train_size"] * scale))
    d["val_size"] = max(8, int(d["val_size"] * min(1.0, scale)))
    t["epochs"] = max(1, round(t["epochs"] * min(1.0, scale ** 0.5) if scale < 1 else t["epochs"] * scale))
    return cfg


def _flops(cfg: dict, shape: tuple) -> tuple[float, float]:
    from ..flops import count_flops
    extra = {"num_classes": cfg["data"]["num_classes"]} if task_class(cfg["task"]).kind == "classify" else {}
    m = create(cfg["model"], cfg, "model", **extra)
    r = count_flops(m, (1, *shape))
    return r["counter"] / 1e6, r["full"] / 1e6


def run_demo(out: str = "runs/demo", scale: float = 1.0, seed: int = 0, backend: str | None = None) -> list[dict]:
    import vimd_kernels.registry as reg
    resolved = reg.resolve(backend, torch.device("cpu"))
    common = [f"output_dir={out}", f"seed={seed}", f"backend={backend if backend else 'null'}"]
    t0 = time.perf_counter()
    results = []

    def run(label: str, cfg_name: str, extra: list[str], shape: tuple) -> dict:
        cfg = _sized(cfg_name, scale, common + extra)
        print(f"[demo] {label}: {cfg['task']} {cfg['model']['name']} ({cfg['train']['epochs']} epochs, "
              f"{cfg['data']['train_size']} images) ...", flush=True)
        res = train(cfg)
        best = res["best"] or {}
        counter, full = _flops(cfg, shape)
        row = {"run": label, "task": cfg["task"], "model": cfg["model"]["name"], "params": res["params"],
               "top1": best.get("val_top1"), "psnr": best.get("val_psnr"), "ssim": best.get("val_ssim"),
               "mmac_counter": counter, "mmac_full": full, "images_per_s": res["last"]["images_per_s"],
               "backend": resolved, "seed": seed, "run_dir": res["run_dir"]}
        results.append(row)
        print(f"[demo] {label}: " + (f"top1 {row['top1']:.2f}%" if row["top1"] is not None else
                                     f"PSNR {row['psnr']:.2f} dB SSIM {row['ssim']:.4f}")
              + f"  ({time.perf_counter() - t0:.0f} s elapsed)", flush=True)
        return res

    teacher = run("HRVM teacher (HR 64)", "demo_teacher.yaml", ["name=hrvm_teacher"], (3, 64, 64))
    t_ckpt = os.path.join(teacher["run_dir"], "best.safetensors")
    sr_s = run("DVMSR small (L1)", "demo_sr.yaml", ["name=dvmsr_small"], (3, 16, 16))
    big = "model.kwargs={embed_dim: 32, depths: [2, 2]}"
    sr_t = run("DVMSR teacher (L1)", "demo_sr.yaml", ["name=dvmsr_teacher", big], (3, 16, 16))
    run("DVMSR small + teacher KD", "demo_sr.yaml",
        ["name=dvmsr_small_kd", "task=dvmsr_kd", "teacher.name=dvmsr_micro", "teacher.kwargs={embed_dim: 32, depths: [2, 2]}",
         f"teacher.checkpoint={os.path.join(sr_t['run_dir'], 'best.safetensors')}"], (3, 16, 16))
    sr_ckpt = os.path.join(sr_s["run_dir"], "best.safetensors")
    run("SRVM student, CE only (LR 16)", "demo_vimd.yaml",
        ["name=srvm_ce", "distill.alpha=0", f"model.sr_checkpoint={sr_ckpt}"], (3, 16, 16))
    run("SRVM student, ViMD loss (LR 16)", "demo_vimd.yaml",
        ["name=srvm_vimd", f"teacher.checkpoint={t_ckpt}", f"model.sr_checkpoint={sr_ckpt}"], (3, 16, 16))

    total = time.perf_counter() - t0
    _report(results, out, total, seed)
    return results


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _report(rows: list[dict], out: str, total: float, seed: int) -> None:
    head = ["run", "top1 %", "PSNR dB", "SSIM", "params", "MMAC (counter / full)", "train img/s", "backend"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["run"], _fmt(r["top1"], ".2f"), _fmt(r["psnr"], ".2f"), _fmt(r["ssim"], ".4f"),
                                        f"{r['params']:,}", f"{r['mmac_counter']:.1f} / {r['mmac_full']:.1f}",
                                        f"{r['images_per_s']:.1f}", r["backend"]]) + " |")
    by = {r["run"]: r for r in rows}
    ce, vd = by.get("SRVM student, CE only (LR 16)"), by.get("SRVM student, ViMD loss (LR 16)")
    s, kd = by.get("DVMSR small (L1)"), by.get("DVMSR small + teacher KD")
    notes = [f"seed {seed}; total {total:.0f} s; metrics are the best epoch on the synthetic validation split."]
    if ce and vd:
        notes.append(f"ViMD loss vs CE only: top-1 {vd['top1']:.2f}% vs {ce['top1']:.2f}% "
                     f"({vd['top1'] - ce['top1']:+.2f} points).")
    if s and kd:
        notes.append(f"DVMSR teacher distillation: PSNR {kd['psnr']:.2f} vs {s['psnr']:.2f} dB "
                     f"({kd['psnr'] - s['psnr']:+.3f} dB), SSIM {kd['ssim'] - s['ssim']:+.4f}.")
    notes.append("One seed, tiny models and data: differences of this size may be noise; "
                 "run with other --seed values before drawing conclusions.")
    text = "\n".join(lines + [""] + notes)
    print("\n" + text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _plot(rows, os.path.join(out, "results.png"))


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cls = [r for r in rows if r["top1"] is not None]
    sr = [r for r in rows if r["psnr"] is not None]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.barh([r["run"] for r in cls], [r["top1"] for r in cls], color="tab:blue")
    a.set_xlabel("top-1 accuracy (%)")
    b.barh([r["run"] for r in sr], [r["psnr"] for r in sr], color="tab:orange")
    lo = min(r["psnr"] for r in sr) if sr else 0
    b.set_xlim(left=max(0, lo - 1))
    b.set_xlabel("PSNR on Y (dB)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
