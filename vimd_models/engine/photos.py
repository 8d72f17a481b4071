"""``vimd sr-photos``: DVMSR (x4) on real photographs, no download.

The photographs scikit-image ships (``data.photos.PHOTOS``: 10 to train on, 5 test photos never
trained on) train, from the packaged config ``photos_sr``, a DVMSR teacher, the small DVMSR with L1,
and the small DVMSR with L1 plus the teacher's output as extra supervision (DVMSR's distillation).
Each model's final weights and MATLAB-style bicubic upsampling are then measured on every test photo
(PSNR / SSIM on Y, border = scale, as BasicSR), into results.md / results.csv, results.png (means)
and crops.png (one crop of every test photo per method).
"""
from __future__ import annotations

import json
import os
import time

import torch

from ..configs import CONFIG_DIR
from ..data.photos import PHOTOS, PhotoSR
from ..data.sr import imresize, to_float, to_uint8
from ..tasks import model_from_config
from ..weights import load
from .config import load_config
from .demo import DVMSR_BIG, FINAL, Run, _machine, _PhaseBar, write_results
from .metrics import psnr_y, ssim_y
from .plots import write_image_grid, write_results_plot
from .trainer import train

RUNS = (
    Run("dvmsr_teacher", "DVMSR teacher (L1)", "photos_sr", (3, 16, 16), (f"model.kwargs={DVMSR_BIG}",)),
    Run("dvmsr_small", "DVMSR small (L1)", "photos_sr", (3, 16, 16)),
    Run("dvmsr_small_kd", "DVMSR small + teacher supervision", "photos_sr", (3, 16, 16),
        ("task=dvmsr_kd", "teacher.name=dvmsr_micro", f"teacher.kwargs={DVMSR_BIG}"),
        (("teacher.checkpoint", "dvmsr_teacher", FINAL),)),
)
BICUBIC = "Bicubic (MATLAB)"
CROP = 96  # HR pixels of each photo's crop in crops.png


def bicubic_up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """uint8 (3, h, w) -> float (3, h*scale, w*scale) in [0, 1]: MATLAB bicubic, rounded to 8 bits."""
    return to_float(to_uint8(imresize(lr.double(), scale)))


def _load_final(cfg: dict, run_dir: str) -> torch.nn.Module:
    model = model_from_config(cfg)
    load(model, os.path.join(run_dir, FINAL), what=run_dir)
    return model.eval().to("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def measure(methods: dict[str, object], scale: int) -> tuple[list[dict], dict[str, list[torch.Tensor]]]:
    """Per test photo and method: PSNR / SSIM on Y; and each method's output for crops.png.
    ``methods``: label -> model, or None for bicubic."""
    test = PhotoSR("test", scale)
    rows, outs = [], {label: [] for label in methods}
    for i, name in enumerate(PHOTOS["test"]):
        hr_u8, lr_u8 = test.get_u8(i)
        hr = to_float(hr_u8)[None]
        row = {"photo": name, "size": f"{hr.shape[-1]}x{hr.shape[-2]}"}
        for label, model in methods.items():
            if model is None:
                sr = bicubic_up(lr_u8, scale)[None]
            else:
                device = next(model.parameters()).device
                sr = model(to_float(lr_u8)[None].to(device)).float().clamp(0, 1).cpu()
            row[f"{label} PSNR"] = psnr_y(sr, hr, scale).item()
            row[f"{label} SSIM"] = ssim_y(sr, hr, scale).item()
            outs[label].append(sr[0])
        outs.setdefault("HR", []).append(hr[0])
        rows.append(row)
    return rows, outs


def _centre_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[:, y:y + size, x:x + size]


def run_photos(out: str = "runs/sr_photos", seed: int = 0, backend: str | None = None,
               iterations: int | None = None) -> list[dict]:
    common = [f"output_dir={out}", f"seed={seed}", f"backend={backend if backend else 'null'}", "train.progress=false"]
    if iterations is not None:
        common += [f"train.iterations={iterations}", f"train.eval_every={max(1, iterations // 4)}"]
    t0 = time.perf_counter()
    dirs, cfgs, summary = {}, {}, []
    for r in RUNS:
        links = [f"{key}={os.path.join(dirs[src], file)}" for key, src, file in r.inputs]
        cfg = load_config(os.path.join(CONFIG_DIR, r.config + ".yaml"), common + [f"name={r.name}", *r.extra, *links])
        print(f"[sr-photos] {r.label}: {cfg['task']} {cfg['model']['name']} "
              f"({cfg['train']['iterations']} iterations of batch {cfg['data']['batch_size']}) ...", flush=True)
        bar = _PhaseBar(r.label, "sr-photos")
        start = time.perf_counter()
        try:
            res = train(cfg, on_step_end=[bar])
        finally:
            bar.close()
        dirs[r.name], cfgs[r.name] = res["run_dir"], cfg
        with open(os.path.join(res["run_dir"], "run_info.json")) as f:
            resolved = json.load(f)["backend"]
        summary.append({"run": r.label, "params": res["params"], "time_s": time.perf_counter() - start,
                        "images_per_s": res["last"]["images_per_s"]})
        print(f"[sr-photos] {r.label}: final PSNR {res['last']['val_psnr']:.2f} dB "
              f"({summary[-1]['time_s']:.0f} s)", flush=True)
    scale = cfgs[RUNS[0].name]["data"]["scale"]
    methods = {BICUBIC: None, **{r.label: _load_final(cfgs[r.name], dirs[r.name]) for r in RUNS[1:] + RUNS[:1]}}
    rows, outs = measure(methods, scale)
    _report(rows, outs, summary, out, seed, time.perf_counter() - t0, _machine(resolved))
    return rows


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def _report(rows, outs, summary, out: str, seed: int, total: float, machine: str) -> None:
    labels = [k for k in outs if k != "HR"]
    head = ["photo (HR size)", *labels]
    lines = ["PSNR / SSIM on Y (dB / 0-1; border 4 cropped), x4, on test photos none of the models trained on:",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['photo']} ({r['size']}) | "
                     + " | ".join(f"{r[f'{m} PSNR']:.2f} / {r[f'{m} SSIM']:.4f}" for m in labels) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{_mean(rows, f'{m} PSNR'):.2f} / {_mean(rows, f'{m} SSIM'):.4f}**"
                                             for m in labels) + " |")
    lines += ["", "| model | params | train img/s | time s |", "|---|---|---|---|"]
    lines += [f"| {s['run']} | {s['params']:,} | {s['images_per_s']:.1f} | {s['time_s']:.0f} |" for s in summary]
    small, kd = RUNS[1].label, RUNS[2].label
    d = [r[f"{kd} PSNR"] - r[f"{small} PSNR"] for r in rows]
    lines += ["", f"seed {seed}; total {total:.0f} s on {machine}.",
              f"Teacher supervision vs L1 alone (small DVMSR): {_mean(rows, f'{kd} PSNR') - _mean(rows, f'{small} PSNR'):+.3f} dB "
              f"mean PSNR, better on {sum(v > 0 for v in d)} of {len(d)} photos; "
              f"small DVMSR vs bicubic: {_mean(rows, f'{small} PSNR') - _mean(rows, f'{BICUBIC} PSNR'):+.3f} dB.",
              "Training photos: " + ", ".join(PHOTOS["train"]) + "."]
    write_results(out, "\n".join(lines), rows)
    means = [{"run": m, "psnr": _mean(rows, f"{m} PSNR"), "ssim": _mean(rows, f"{m} SSIM")} for m in labels]
    write_results_plot(means, os.path.join(out, "results.png"),
                       f"x4 SR on {len(rows)} test photos (mean; seed {seed})", baseline=BICUBIC)
    cols = ["HR", *labels]
    crops = torch.stack([_centre_crop(outs[c][i], CROP) for i in range(len(rows)) for c in cols])
    write_image_grid(crops, os.path.join(out, "crops.png"), f"x4 SR, centre {CROP}x{CROP} crops of the test photos",
                     [c.replace(" + teacher supervision", " + T") for _ in rows for c in cols], ncols=len(cols))


__all__ = ["RUNS", "run_photos", "measure", "bicubic_up"]
