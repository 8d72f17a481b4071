"""``vimd demo``: the three papers' pipelines on the synthetic fine-grained birds, no data on disk.

RUNS lists the runs in order; each is a packaged config plus overrides, and may read files of earlier
runs (a teacher checkpoint, recorded statistics):

1. DVMSR (x4): a small DVMSR with L1, a larger DVMSR teacher, the small one with teacher supervision;
2. ViMD: an HRVM teacher (ViM) on HR 64x64, the SRVM student (frozen small DVMSR -> ViM) on LR 16x16
   with CE only and with the ViMD loss;
3. DFKD-FGVC: a ResNet teacher on HR 32x32, then students that never see a real image: the full
   method, the paper's ablation baseline (generator without attention, KD + BN prior only), and a
   ResNet student of the BN-free HRVM teacher through its recorded RMSNorm-input statistics.

Then results.md (the COLUMNS table and notes), results.csv and results.png; each data-free run also
gets generator.png, a grid of its generator's images. The effect of each method is whatever was
measured, reported with the seed used. ``scale`` multiplies the training lengths and data sizes
(scale < 1 for a quick smoke run).
"""
from __future__ import annotations

import csv
import json
import os
import platform
import time
from dataclasses import dataclass

import torch

from ..checkpoint import load_state
from ..configs import CONFIG_DIR
from ..tasks import build_task, model_from_config, task_class
from ..weights import load_into
from .config import load_config
from .plots import write_image_grid, write_results_plot
from .trainer import STATE_FILE, train

BEST, FINAL, NORM_STATS = "best.safetensors", "model.safetensors", "norm_stats.safetensors"
DVMSR_BIG = "{embed_dim: 32, depths: [2, 2]}"


@dataclass(frozen=True)
class Run:
    name: str                          # run folder under the demo's output folder
    label: str                         # row of the results table
    config: str                        # packaged config (vimd_models/configs/<config>.yaml)
    shape: tuple[int, int, int]        # one model input (C, H, W), for the FLOP count
    extra: tuple[str, ...] = ()        # config overrides
    inputs: tuple[tuple[str, str, str], ...] = ()  # (config key, earlier run, file in its folder)


RUNS = (
    Run("dvmsr_small", "DVMSR small (L1)", "demo_sr", (3, 16, 16)),
    Run("dvmsr_teacher", "DVMSR teacher (L1)", "demo_sr", (3, 16, 16), (f"model.kwargs={DVMSR_BIG}",)),
    Run("dvmsr_small_kd", "DVMSR small + teacher supervision", "demo_sr", (3, 16, 16),
        ("task=dvmsr_kd", "teacher.name=dvmsr_micro", f"teacher.kwargs={DVMSR_BIG}"),
        (("teacher.checkpoint", "dvmsr_teacher", BEST),)),
    Run("hrvm_teacher", "HRVM teacher (HR 64)", "demo_teacher", (3, 64, 64)),
    Run("srvm_ce", "SRVM student, CE only (LR 16)", "demo_vimd", (3, 16, 16), ("distill.alpha=0",),
        (("model.sr_checkpoint", "dvmsr_small", BEST),)),
    Run("srvm_vimd", "SRVM student, ViMD loss (LR 16)", "demo_vimd", (3, 16, 16), (),
        (("model.sr_checkpoint", "dvmsr_small", BEST), ("teacher.checkpoint", "hrvm_teacher", BEST))),
    Run("resnet_teacher", "ResNet teacher (HR 32)", "demo_dfkd_teacher", (3, 32, 32)),
    Run("dfkd", "DFKD-FGVC student, data-free (HR 32)", "demo_dfkd", (3, 32, 32), (),
        (("teacher.checkpoint", "resnet_teacher", BEST),)),
    Run("dfkd_baseline", "DFKD ablation: no attention, KD + BN prior", "demo_dfkd", (3, 32, 32),
        ("distill.dfkd.sam_lambda=0", "distill.dfkd.w_mhad=0", "distill.dfkd.w_sfcl=0"),
        (("teacher.checkpoint", "resnet_teacher", BEST),)),
    # the teacher's final weights: the statistics are recorded from them at the end of its training
    Run("dfkd_vim", "ViM teacher, data-free, norm-stats prior (HR 64)", "demo_dfkd_vim", (3, 64, 64), (),
        (("teacher.checkpoint", "hrvm_teacher", FINAL), ("distill.dfkd.norm_stats", "hrvm_teacher", NORM_STATS))),
)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


# results.md table: (header, cell of a result row)
COLUMNS = (
    ("run", lambda r: r["run"]),
    ("top-1 %", lambda r: _fmt(r["top1"], ".2f")),
    ("PSNR dB", lambda r: _fmt(r["psnr"], ".2f")),
    ("SSIM", lambda r: _fmt(r["ssim"], ".4f")),
    ("params", lambda r: f"{r['params']:,}"),
    ("MMAC (counter / full)", lambda r: f"{r['mmac_counter']:.1f} / {r['mmac_full']:.1f}"),
    ("train img/s", lambda r: f"{r['images_per_s']:.1f}"),
    ("time s", lambda r: f"{r['time_s']:.0f}"),
    ("backend", lambda r: r["backend"]),
)


def _sized(cfg_name: str, scale: float, extra: list[str]) -> dict:
    """The config with epochs (and a data-free run's steps per epoch) and data sizes scaled."""
    cfg = load_config(os.path.join(CONFIG_DIR, cfg_name + ".yaml"), extra)
    d, t = cfg["data"], cfg["train"]
    d["train_size"] = max(d["batch_size"] * 2, int(d["train_size"] * scale))
    d["val_size"] = max(8, int(d["val_size"] * min(1.0, scale)))
    length = (lambda n: max(1, round(n * scale ** 0.5))) if scale < 1 else (lambda n: max(1, round(n * scale)))
    t["epochs"] = length(t["epochs"])
    if task_class(cfg["task"]).data_free:
        t["steps_per_epoch"] = length(t["steps_per_epoch"])
    return cfg


def _flops(cfg: dict, shape: tuple) -> tuple[float, float]:
    from ..flops import count_flops
    extra = {"num_classes": cfg["data"]["num_classes"]} if task_class(cfg["task"]).kind == "classify" else {}
    m = model_from_config(cfg, **extra)
    r = count_flops(m, (1, *shape))
    return r["counter"] / 1e6, r["full"] / 1e6


class _PhaseBar:
    """A progress bar over all the optimiser steps of one run (a trainer step callback)."""

    def __init__(self, label: str, prefix: str = "demo"):
        self.label, self.prefix, self.bar = label, prefix, None

    def __call__(self, trainer, step: int) -> None:
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=trainer.total_steps, desc=f"[{self.prefix}] {self.label}", leave=False, dynamic_ncols=True)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def _generator_grid(cfg: dict, run_dir: str, label: str, n: int = 32) -> str:
    """generator.png: the last ``n`` images the generator synthesised (the pool the student trained
    on), each captioned with the teacher's class and confidence."""
    task = build_task(cfg, cfg["data"]["num_classes"])
    state, _ = load_state(os.path.join(run_dir, STATE_FILE))
    load_into(task, state["task"], run_dir)
    task.eval()
    x = task.pool.latest(n)
    p = task.teacher(x).float().softmax(1)
    conf, cls = p.max(1)
    path = os.path.join(run_dir, "generator.png")
    write_image_grid(x, path, f"{label}: synthesised images (caption: teacher's class, confidence)",
                     [f"class {c} ({v:.2f})" for c, v in zip(cls.tolist(), conf.tolist())])
    return path


def _machine(backend: str) -> str:
    """CPU model, torch threads, for the cpu backend the ISA path of the compiled kernels, and the
    versions of the packages the numbers depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {torch.get_num_threads()} torch threads"
    if backend == "cpu":
        import vimd_kernels.registry as reg
        ext = reg.extension()
        info = ext.build_info() if ext is not None and hasattr(ext, "build_info") else {}
        text += f", CPU kernels: {info.get('cpu_isa', 'n/a')} path"
    import numpy
    import PIL
    from vimd_kernels import __version__
    return text + f"; vimd {__version__}, torch {torch.__version__}, numpy {numpy.__version__}, Pillow {PIL.__version__}"


def run_demo(out: str = "runs/demo", scale: float = 1.0, seed: int = 0, backend: str | None = None,
             runs: tuple[Run, ...] = RUNS) -> list[dict]:
    common = [f"output_dir={out}", f"seed={seed}", f"backend={backend if backend else 'null'}", "train.progress=false"]
    t0 = time.perf_counter()
    results, dirs, by_name = [], {}, {}
    for r in runs:
        links = [f"{key}={os.path.join(dirs[src], file)}" for key, src, file in r.inputs]
        cfg = _sized(r.config, scale, common + [f"name={r.name}", *r.extra, *links])
        data_free = task_class(cfg["task"]).data_free
        size = (f"{cfg['train']['steps_per_epoch']} steps" if data_free else f"{cfg['data']['train_size']} images")
        print(f"[demo] {r.label}: {cfg['task']} {cfg['model']['name']} ({cfg['train']['epochs']} epochs x {size}) ...",
              flush=True)
        bar = _PhaseBar(r.label)
        start = time.perf_counter()
        try:
            res = train(cfg, on_step_end=[bar])
        finally:
            bar.close()
        took = time.perf_counter() - start
        dirs[r.name] = res["run_dir"]
        with open(os.path.join(res["run_dir"], "run_info.json")) as f:
            resolved = json.load(f)["backend"]  # the kernel backend the run used on its device
        best = res["best"] or {}
        counter, full = _flops(cfg, r.shape)
        row = {"run": r.label, "name": r.name, "task": cfg["task"], "model": cfg["model"]["name"],
               "params": res["params"], "top1": best.get("val_top1"), "psnr": best.get("val_psnr"),
               "ssim": best.get("val_ssim"), "final_top1": res["last"].get("val_top1"),
               "mmac_counter": counter, "mmac_full": full, "images_per_s": res["last"]["images_per_s"],
               "time_s": took, "backend": resolved, "seed": seed, "run_dir": res["run_dir"],
               "chance": 100.0 / cfg["data"]["num_classes"] if task_class(cfg["task"]).kind == "classify" else None,
               "teacher": None, "teacher_top1": None}
        for key, src, file in r.inputs:
            if key == "teacher.checkpoint":
                t = by_name[src]
                row.update(teacher=t["run"], teacher_top1=t["final_top1"] if file == FINAL else t["top1"])
        if data_free:
            _generator_grid(cfg, res["run_dir"], r.label)
        results.append(row)
        by_name[r.name] = row
        print(f"[demo] {r.label}: " + (f"top1 {row['top1']:.2f}%" if row["top1"] is not None else
                                       f"PSNR {row['psnr']:.2f} dB SSIM {row['ssim']:.4f}")
              + f"  ({took:.0f} s; {time.perf_counter() - t0:.0f} s elapsed)", flush=True)
    _report(results, out, time.perf_counter() - t0, seed, _machine(resolved))
    return results


def _notes(rows: list[dict]) -> list[str]:
    """One line per comparison the demo makes (only for the runs present)."""
    by = {r["name"]: r for r in rows}
    notes = []
    ce, vd = by.get("srvm_ce"), by.get("srvm_vimd")
    if ce and vd:
        notes.append(f"ViMD loss vs CE only: top-1 {vd['top1']:.2f}% vs {ce['top1']:.2f}% "
                     f"({vd['top1'] - ce['top1']:+.2f} points).")
    s, kd = by.get("dvmsr_small"), by.get("dvmsr_small_kd")
    if s and kd:
        notes.append(f"DVMSR teacher supervision: PSNR {kd['psnr']:.2f} vs {s['psnr']:.2f} dB "
                     f"({kd['psnr'] - s['psnr']:+.3f} dB), SSIM {kd['ssim'] - s['ssim']:+.4f}.")
    free = [r for r in rows if r["task"] == "dfkd"]
    if free:
        parts = [f"{r['run']} {r['top1']:.2f}%{' (near chance)' if r['top1'] < r['chance'] + 5 else ''} "
                 f"vs its teacher {r['teacher_top1']:.2f}%" for r in free]
        notes.append("Data-free students (no real image seen; top-1 on the real validation split, chance "
                     f"{free[0]['chance']:g}%): " + "; ".join(parts) + ".")
    return notes


def write_results(out: str, text: str, rows: list[dict]) -> None:
    """Print ``text`` and write it to ``out``/results.md, and ``rows`` to ``out``/results.csv."""
    print("\n" + text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _report(rows: list[dict], out: str, total: float, seed: int, machine: str) -> None:
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r) for _, cell in COLUMNS) + " |" for r in rows]
    notes = [f"seed {seed}; total {total:.0f} s on {machine}; metrics are the best evaluation "
             "on the synthetic validation split.", *_notes(rows),
             "One seed, tiny models and data: differences of this size may be noise; "
             "run with other --seed values before drawing conclusions."]
    write_results(out, "\n".join(lines + [""] + notes), rows)
    chance = next((r["chance"] for r in rows if r["chance"] is not None), None)
    write_results_plot(rows, os.path.join(out, "results.png"), f"vimd demo (seed {seed}, {total:.0f} s)",
                       chance=chance, baseline=next((r["run"] for r in rows if r["name"] == "dvmsr_small"), None))
