"""What a GPU user asks first, as stages of the one-call GPU check (tools/gpu/bar_check.sh runs them
through tools/gpu/gpu_check.sh after the kernel cells): does training run on the fast backend, and
how much faster is a whole model's training step than on mamba_ssm + causal_conv1d?

  python -m tools.gpu.model_check train --device cuda --out OUT/train --budget-s 60
      `vimd demo` shortened (every pipeline: DVMSR, ViMD, DFKD; --scale 0.001: one epoch of two
      batches, or a few data-free steps, per run) with the cuda backend, then `vimd train` of
      ViM-Ti/16 at 224 for one bfloat16-autocast step; each run checked: on the device and backend
      asked for, finite losses, its checkpoint and weights reload into a fresh model that runs.
  python -m tools.gpu.model_check model-step --device cuda --out OUT/model-step --budget-s 70
      ViM-Ti/16 224 (batch 64) and DVMSR x4 at its training patch (LR 64x64, batch 16:
      configs/dvmsr_div2k.yaml, HR 256 / 4): forward+backward step time and peak memory, float32 and
      bfloat16 autocast, on our cuda backend, on the same model with its mixers on mamba_ssm +
      causal_conv1d (vimd_models.bench, backend mamba_ssm), and on triton, all in one process
      (`vimd bench models --in-process --train-only`); first a check that the model on the upstream
      kernels computes what ours does (same weights, same input).
  python -m tools.gpu.model_check deploy --device cuda --out OUT/deploy --train OUT/train --budget-s 45
      `vimd sr` of one image with the DVMSR the train stage trained, and that model exported by
      `vimd export --device cuda` (AOTInductor package) run and compared with the eager model and with
      the image `vimd sr` wrote.
  python -m tools.gpu.model_check summary OUT
      The stages that ran, failed or were skipped ($OUT/stages.tsv, written by gpu_check.sh) and the
      model-level ratios (OUT/model-step/result.json).

--device cpu is the rehearsal on a machine without a GPU: the same steps at tiny sizes (micro
models, the cpu backend; ref in place of the upstream kernels, which need a GPU) so that everything
but the GPU work is exercised. Each step that would not fit in what is left of --budget-s is skipped
and says so. Each subcommand writes OUT/result.json and prints its verdict lines starting "CHECK ";
rc 0 when every step it ran passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass

STAGES = ("train", "model-step", "deploy")


@dataclass(frozen=True)
class Sizes:
    backend: str               # our kernel backend on this device
    demo_scale: float          # vimd demo --scale
    step_model: str            # the bfloat16 training step's model
    step_img: int
    step_batch: int
    bench: tuple               # vimd bench models arguments of the model-step stage
    export_input: str          # vimd export --input (the image the deploy stage writes)
    est_s: dict                # each step's expected seconds (its skip threshold)


SIZES = {
    "cuda": Sizes(
        backend="cuda", demo_scale=0.001, step_model="vim_tiny_patch16_224", step_img=224, step_batch=16,
        bench=("--models", "vim_tiny_patch16_224,dvmsr", "--batch", "vim_tiny_patch16_224=64,dvmsr=16",
               "--backends", "cuda,mamba_ssm,triton", "--ref-models", "none", "--warmup", "2", "--repeats", "5"),
        export_input="1,3,32,32",
        est_s={"demo": 35, "bf16-step": 15, "peer-check": 10, "bench": 30, "sr": 8, "export": 30}),
    "cpu": Sizes(
        backend="cpu", demo_scale=0.001, step_model="vim_micro", step_img=32, step_batch=8,
        bench=("--quick", "--models", "vim_micro,dvmsr_micro", "--backends", "cpu,mamba_ssm,ref",
               "--ref-models", "all", "--warmup", "1", "--repeats", "3"),
        export_input="1,3,32,32",
        est_s={"demo": 60, "bf16-step": 10, "peer-check": 5, "bench": 20, "sr": 5, "export": 60}),
}


class Budget:
    """Seconds left of a subcommand's budget; ``fits(step)`` is False (and records why) when the
    step's expected time (Sizes.est_s) is more than what is left."""

    def __init__(self, budget_s: float, est_s: dict, clock=time.monotonic):
        self.budget_s, self.est_s, self.clock, self.t0 = budget_s, est_s, clock, clock()

    def left(self) -> float:
        return self.budget_s - (self.clock() - self.t0)

    def fits(self, step: str) -> tuple[bool, str]:
        need = self.est_s.get(step, 0)
        if self.left() >= need:
            return True, ""
        return False, f"skipped: {self.left():.0f} s left of the stage's {self.budget_s:.0f} s, needs ~{need} s"


class Report:
    """The steps of one subcommand: name -> {status: ok | FAILED | skipped, seconds, detail}; with
    ``out``, OUT/result.json is rewritten after every step (a stage killed at its budget keeps them)."""

    def __init__(self, stage: str, device: str, out: str | None = None):
        self.stage, self.device, self.out, self.steps, self.extra = stage, device, out, {}, {}

    def add(self, step: str, status: str, detail: str, seconds: float | None = None, **extra) -> None:
        self.steps[step] = dict(status=status, seconds=seconds, detail=detail, **extra)
        took = "" if seconds is None else f" ({seconds:.0f} s)"
        print(f"CHECK {self.stage}: {step} on {self.device}: {status}{took} -- {detail}", flush=True)
        if self.out:
            self.write()

    def run(self, step: str, budget: Budget, fn) -> object:
        """fn() -> (ok, detail[, extra dict]) timed and recorded; skipped when it does not fit."""
        fits, why = budget.fits(step)
        if not fits:
            self.add(step, "skipped", why)
            return None
        t = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # a failed step is reported and the others still run
            from vimd_models.bench import Unsupported
            msg = str(e).strip().splitlines()
            if isinstance(e, Unsupported):  # e.g. the upstream kernels are not carried: said, not failed
                self.add(step, "skipped", msg[-1], time.perf_counter() - t)
            else:
                self.add(step, "FAILED", f"{type(e).__name__}: {msg[-1] if msg else ''}"[:400], time.perf_counter() - t)
            return None
        ok, detail, *extra = res
        self.add(step, "ok" if ok else "FAILED", detail, time.perf_counter() - t, **(extra[0] if extra else {}))
        return res

    @property
    def ok(self) -> bool:
        return all(s["status"] != "FAILED" for s in self.steps.values())

    def write(self, out: str | None = None, **extra) -> None:
        out = out or self.out
        self.extra.update(extra)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(dict(stage=self.stage, device=self.device, ok=self.ok, steps=self.steps, **self.extra), f,
                      indent=1, default=str)


# ----------------------------------------------------------------------------- train

def losses(summary_csv: str) -> dict:
    """The last row's loss and metric columns (train_*, val_*) of a run's summary.csv."""
    with open(summary_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{summary_csv} has no rows")
    return {k: float(v) for k, v in rows[-1].items() if k.startswith(("train_", "val_")) and v not in ("", None)
            and k != "train_time_s"}


def check_run(run_dir: str, shape: tuple, device: str, backend: str, dtype: str = "float32") -> tuple:
    """(ok, detail) of one finished training run: run_info.json says the device / backend / dtype asked
    for, every loss in summary.csv is finite, the resumable checkpoint reads back, and the run's
    weights (model.safetensors) load into a fresh model from its config.yaml that then runs to a
    finite output on ``device``."""
    import torch
    import yaml

    from vimd_models.checkpoint import load_state
    from vimd_models.tasks import model_from_config, task_class
    from vimd_models.weights import load

    problems = []
    with open(os.path.join(run_dir, "run_info.json")) as f:
        info = json.load(f)
    if info.get("device", "").split(":")[0] != device or info.get("backend") != backend:
        problems.append(f"ran on {info.get('device')} / {info.get('backend')}, not {device} / {backend}")
    if dtype == "bfloat16" and not info.get("dtype", "").startswith("bfloat16"):
        problems.append(f"dtype {info.get('dtype')!r}, not bfloat16 autocast")
    metrics = losses(os.path.join(run_dir, "summary.csv"))
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        problems.append(f"not finite: {', '.join(bad)}")
    state, _ = load_state(os.path.join(run_dir, "checkpoint.safetensors"))
    with open(os.path.join(run_dir, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    extra = {"num_classes": cfg["data"]["num_classes"]} if task_class(cfg["task"]).kind == "classify" else {}
    model = model_from_config(cfg, **extra)
    load(model, os.path.join(run_dir, "model.safetensors"))
    model.to(device).eval()
    with torch.no_grad():
        out = model(torch.rand(1, *shape, device=device))
    if not torch.isfinite(out.float()).all():
        problems.append("the reloaded model's output is not finite")
    loss = metrics.get("train_loss")
    detail = (f"{os.path.basename(run_dir)}: {info.get('device')}/{info.get('backend')}/{info.get('dtype')}, "
              f"train_loss {loss:.4g}" if loss is not None else os.path.basename(run_dir))
    detail += ", checkpoint and weights reload" if not problems else ""
    return not problems, detail + ("; " + "; ".join(problems) if problems else ""), \
        {"metrics": metrics, "checkpoint_keys": sorted(state)}


def _cli(argv: list) -> None:
    from vimd_models import cli
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's errors
        rc = e.code
    if rc:
        raise RuntimeError(f"vimd {' '.join(map(str, argv[:2]))} exited with {rc}")


def step_config(sizes: Sizes, out: str, device: str) -> str:
    """A `vimd train` config: one bfloat16-autocast training step of sizes.step_model on synthetic
    images (one batch to train on, one to evaluate)."""
    import yaml
    cfg = {"task": "classify", "name": f"{sizes.step_model}_bf16", "output_dir": out, "backend": sizes.backend,
           "model": {"name": sizes.step_model},
           "data": {"dataset": "synthetic", "num_classes": 10, "train_size": sizes.step_batch,
                    "val_size": sizes.step_batch, "img_size": sizes.step_img, "lr_size": sizes.step_img // 4,
                    "views": "hr", "batch_size": sizes.step_batch, "eval_batch_size": sizes.step_batch},
           "optim": {"name": "adamw", "lr": 1.0e-4, "weight_decay": 0.05},
           "sched": {"name": "cosine", "warmup_epochs": 0},
           "train": {"epochs": 1, "amp": "bf16", "device": device, "progress": False}}
    path = os.path.join(out, "bf16_step.yaml")
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


def cmd_train(a, sizes: Sizes) -> Report:
    from vimd_models.engine.demo import RUNS
    rep, budget = Report("train", a.device, a.out), Budget(a.budget_s, sizes.est_s)
    demo = os.path.join(a.work, "demo")

    def run_demo():
        _cli(["demo", "--scale", sizes.demo_scale, "--backend", sizes.backend, "--out", demo])
        os.makedirs(a.out, exist_ok=True)
        shutil.copy(os.path.join(demo, "results.md"), os.path.join(a.out, "demo_results.md"))
        fails, details = [], []
        for r in RUNS:
            ok, detail, _ = check_run(os.path.join(demo, r.name), r.shape, a.device, sizes.backend)
            details.append(detail)
            if not ok:
                fails.append(detail)
        return (not fails, f"{len(RUNS)} runs (DVMSR, ViMD, DFKD), {len(RUNS) - len(fails)} checked ok"
                + ("; " + " | ".join(fails) if fails else ""), {"runs": details})

    rep.run("demo", budget, run_demo)

    def bf16_step():
        _cli(["train", step_config(sizes, a.work, a.device)])
        return check_run(os.path.join(a.work, f"{sizes.step_model}_bf16"), (3, sizes.step_img, sizes.step_img),
                         a.device, sizes.backend, "bfloat16")

    rep.run("bf16-step", budget, bf16_step)
    return rep


# ----------------------------------------------------------------------------- model-step

def peer_check(device: str) -> tuple:
    """The model with its mixers on the upstream kernels computes what ours does: ViM (and DVMSR)
    with the same weights and input, outputs and every gradient against our backend's. On a CPU the
    upstream kernels do not run: vimd_kernels.compat (their API on our ops) stands in for them, which
    checks the replacement of the mixers, not the kernels."""
    import copy

    import torch

    import vimd_models as vm
    from vimd_models import bench
    if device == "cuda":
        ops, who, backend = bench.peer_ops(), "mamba_ssm + causal_conv1d", "cuda"
        cases = (("vim_tiny_patch16_224", (2, 3, 224, 224)), ("dvmsr", (1, 3, 32, 32)))
    else:
        from vimd_kernels.compat import selective_scan_interface
        from vimd_kernels.compat.causal_conv1d import causal_conv1d_fn
        ops, who, backend = (selective_scan_interface, causal_conv1d_fn), "vimd compat stand-in", "cpu"
        cases = (("vim_micro", (2, 3, 32, 32)), ("dvmsr_micro", (1, 3, 16, 16)))
    mixers = bench.peer_mixers(*ops)
    worst, parts = 0.0, []
    for name, shape in cases:
        torch.manual_seed(0)
        ours = vm.create_model(name, backend=backend).to(device)
        peer = copy.deepcopy(ours)
        n = bench.use_mixers(peer, mixers)
        x = torch.rand(*shape, device=device)
        ya, yb = ours(x), peer(x)
        ya.float().pow(2).mean().backward()
        yb.float().pow(2).mean().backward()
        scale = ya.abs().max().item() or 1.0
        out_err = (ya - yb).abs().max().item() / scale
        grad_err = max(((pa.grad - pb.grad).abs().max() / pa.grad.abs().max().clamp_min(1e-12)).item()
                       for pa, pb in zip(ours.parameters(), peer.parameters()) if pa.grad is not None)
        worst = max(worst, out_err, grad_err)
        parts.append(f"{name} ({n} mixers): output {out_err:.1e}, gradients {grad_err:.1e} (max relative)")
    ok = worst < 1e-2  # a wrong replacement is off by O(1); two kernels' rounding by far less
    return ok, f"{who} vs {backend}: " + "; ".join(parts), {"max_rel_err": worst}


def cmd_model_step(a, sizes: Sizes) -> tuple[Report, list]:
    rep, budget = Report("model-step", a.device, a.out), Budget(a.budget_s, sizes.est_s)
    rep.run("peer-check", budget, lambda: peer_check(a.device))
    speedups: list = []

    def bench_step():
        from vimd_models import bench
        left = max(5.0, budget.left() - 10)  # the cases in flight when the budget ends still finish
        bench.main([*sizes.bench, "--device", a.device, "--dtypes", "float32,bfloat16", "--train-only",
                    "--in-process", "--budget-s", f"{left:.0f}", "--out", os.path.join(a.out, "bench")])
        name = "models_quick.json" if "--quick" in sizes.bench else "models.json"
        with open(os.path.join(a.out, "bench", name)) as f:
            res = json.load(f)
        speedups.extend(res["env"]["speedups"])
        rep.extra["ratio_lines"] = res["env"]["speedup_lines"]
        failed = [s for s in res["env"]["skipped"] if "FAILED" in s]
        return (not failed and bool(res["rows"]),
                f"{len(res['rows'])} cases timed, {len(res['env']['skipped'])} not"
                + ("".join(f"; {s}" for s in res["env"]["skipped"])),
                {"rows": res["rows"], "skipped": res["env"]["skipped"]})

    rep.run("bench", budget, bench_step)
    return rep, speedups


# ----------------------------------------------------------------------------- deploy

def write_image(path: str, size: int) -> None:
    """A smooth colour test image with some texture, ``size`` x ``size`` pixels (PNG)."""
    import numpy as np
    from PIL import Image
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    rng = np.random.default_rng(0)
    img = np.stack([0.5 + 0.4 * np.sin(6 * x + 2 * y), 0.5 + 0.4 * np.cos(5 * y - x), x * y], -1)
    img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(path)


def cmd_deploy(a, sizes: Sizes) -> Report:
    import torch

    import vimd_models as vm
    from vimd_models.checkpoint import save_weights
    from vimd_models.weights import load
    rep, budget = Report("deploy", a.device, a.out), Budget(a.budget_s, sizes.est_s)
    os.makedirs(a.out, exist_ok=True)
    size = int(sizes.export_input.split(",")[-1])
    image = os.path.join(a.out, "lr.png")
    write_image(image, size)
    trained = os.path.join(a.train or "", "demo", "dvmsr_small")
    weights, origin = os.path.join(trained, "best.safetensors"), "the train stage's DVMSR small"
    if not os.path.isfile(weights):
        weights, origin = os.path.join(a.work, "dvmsr_micro_init.safetensors"), "dvmsr_micro at random init"
        os.makedirs(a.work, exist_ok=True)
        torch.manual_seed(0)
        save_weights(weights, vm.create_model("dvmsr_micro").state_dict())
    eager = vm.create_model("dvmsr_micro", backend=sizes.backend)
    load(eager, weights)
    eager.to(a.device).eval()
    from vimd_models.data.transforms import load_image
    # contiguous: an AOTInductor package assumes its example's strides (load_image's tensor is a
    # permuted view, on which a package computes garbage without an error; recorded below)
    lr_view = load_image(image)[None].to(a.device)
    lr = lr_view.contiguous()
    with torch.no_grad():
        want = eager(lr).float()
    sr_png = os.path.join(a.out, "sr", f"lr_x{eager.upscale}.png")

    def sr():
        _cli(["sr", image, "--weights", weights, "--model", "dvmsr_micro", "-o", os.path.join(a.out, "sr"),
              "--device", a.device, "--backend", sizes.backend])
        got = load_image(sr_png)
        if tuple(got.shape[-2:]) != (size * eager.upscale,) * 2:
            return False, f"wrote {tuple(got.shape)}, not {size * eager.upscale}x{size * eager.upscale}"
        levels = ((got - want[0].clamp(0, 1).cpu()).abs().max() * 255).item()
        return levels <= 1.01, (f"{origin}: {size}x{size} -> {got.shape[-1]}x{got.shape[-2]} PNG, "
                                f"{levels:.2f} 8-bit levels from the eager model"), {"max_levels": levels}

    rep.run("sr", budget, sr)

    def export():
        package = os.path.join(a.work, "dvmsr_micro.pt2")
        os.makedirs(a.work, exist_ok=True)
        _cli(["export", "dvmsr_micro", "--input", sizes.export_input, "--device", a.device, "--weights", weights,
              "--out", package])
        runner = torch._inductor.aoti_load_package(package)
        with torch.no_grad():
            got = runner(lr).float()
            strided = runner(lr_view).float() if not lr_view.is_contiguous() else got
        err = (got - want).abs().max().item()
        err_strided = (strided - want).abs().max().item()
        return err <= 1e-3, (f"AOTInductor package ({os.path.getsize(package) / 2 ** 20:.1f} MB) on {a.device}: "
                             f"max abs diff {err:.2e} from the eager model (input with other strides: "
                             f"{err_strided:.2e})"), {"max_abs_diff": err, "max_abs_diff_strided": err_strided}

    rep.run("export", budget, export)
    return rep


# ----------------------------------------------------------------------------- summary

def read_stages(path: str) -> list[dict]:
    """gpu_check.sh's stages.tsv: one line per stage (name, status, seconds, detail); the last line of
    a stage wins (a stage first noted as started is then noted as done)."""
    found: dict = {}
    if os.path.isfile(path):
        with open(path) as f:
            for ln in f:
                parts = ln.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[0]:
                    name, status = parts[0], parts[1]
                    secs = parts[2] if len(parts) > 2 and parts[2] not in ("", "-") else None
                    found[name] = dict(name=name, status=status, seconds=int(secs) if secs else None,
                                       detail=parts[3] if len(parts) > 3 else "")
    return list(found.values())


def summary_lines(out: str) -> list[str]:
    """The stage table (what ran, failed, was skipped) and the model-level ratios."""
    stages = read_stages(os.path.join(out, "stages.tsv"))
    lines = ["--- stages ---"]
    for s in stages:
        secs = "-" if s["seconds"] is None else f"{s['seconds']}s"
        lines.append(f"{s['name']:14s} {s['status']:8s} {secs:>5s}  {s['detail']}")
    by = {}
    for s in stages:
        by.setdefault(s["status"], []).append(s["name"])
    lines.append("; ".join(f"{k}: {' '.join(v)}" for k, v in (("ran", by.get("ran", [])),
                                                              ("FAILED", by.get("FAILED", [])),
                                                              ("skipped", by.get("skipped", []))) if v)
                 or "no stage ran")
    lines.append("--- model-level: training step (forward+backward+SGD), same process ---")
    res, bench_json = os.path.join(out, "model-step", "result.json"), None
    for name in ("models.json", "models_quick.json"):  # written after every case, also when killed
        if os.path.isfile(os.path.join(out, "model-step", "bench", name)):
            bench_json = os.path.join(out, "model-step", "bench", name)
    ratios, steps = [], {}
    if os.path.isfile(res):
        with open(res) as f:
            r = json.load(f)
        ratios, steps = r.get("ratio_lines") or [], r.get("steps", {})
    if not ratios and bench_json:
        with open(bench_json) as f:
            ratios = json.load(f)["env"].get("speedup_lines") or []
    if ratios:
        lines += ratios
    elif steps:
        lines.append("no ratio: " + "; ".join(f"{k} {v['status']}: {v['detail']}" for k, v in steps.items())[:600])
    else:
        lines.append("not measured (the model-step stage did not run)")
    return lines


def cmd_summary(a) -> int:
    text = "\n".join(summary_lines(a.out_dir))
    print(text)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.gpu.model_check", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in STAGES:
        p = sub.add_parser(name)
        p.add_argument("--device", choices=sorted(SIZES), required=True)
        p.add_argument("--out", required=True, help="logs, results (result.json), small files")
        p.add_argument("--work", default=None, help="training runs and packages (default: --out)")
        p.add_argument("--budget-s", type=float, default=60)
        if name == "deploy":
            p.add_argument("--train", default=None, help="the train stage's --work (its DVMSR is exported)")
    p = sub.add_parser("summary")
    p.add_argument("out_dir")
    a = ap.parse_args(argv)
    if a.cmd == "summary":
        return cmd_summary(a)
    import torch
    if a.device == "cuda" and not torch.cuda.is_available():
        print(f"CHECK {a.cmd}: torch {torch.__version__} sees no CUDA device", flush=True)
        return 1
    sizes = SIZES[a.device]
    a.work = a.work or a.out
    t = time.perf_counter()
    extra = {}
    if a.cmd == "train":
        rep = cmd_train(a, sizes)
    elif a.cmd == "model-step":
        rep, extra["speedups"] = cmd_model_step(a, sizes)
    else:
        rep = cmd_deploy(a, sizes)
    rep.write(a.out, seconds=time.perf_counter() - t, **extra)
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
