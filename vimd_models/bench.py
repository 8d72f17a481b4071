"""Model benchmark: images/s (forward), ms per training step, peak memory, params, FLOPs (counter
and full), per family and backend. ``vimd bench models [--quick] [--backends ref,cpu]`` (or
``python -m vimd_models.bench ...``).

Each (model, backend) runs in its own subprocess so its peak memory (CUDA: max allocated; CPU:
the subprocess's peak RSS) is its own. Results: a table on stdout and CSV/JSON in ``--out``
(default ./vimd-bench/<device>/), models{_quick}.{csv,json}, with device, versions and git sha.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from vimd_kernels.bench.common import DEFAULT_OUT, OUT_HELP, metadata, results_dir

# (label, registry name, kwargs, input shape without batch, default batch)
FULL = [
    ("ViM-Ti s16 224", "vim_tiny_patch16_224", dict(num_classes=200), (3, 224, 224), 8),
    ("HRVM-Net (ViM-Ti s8 224)", "hrvm_net", dict(num_classes=200), (3, 224, 224), 2),
    ("SRVM-Net (SRResNet->ViM-Ti) 56", "srvm_net", dict(num_classes=200), (3, 56, 56), 8),
    ("SRResNet x4 56", "srresnet_x4", {}, (3, 56, 56), 8),
    ("DVMSR x4 64", "dvmsr", {}, (3, 64, 64), 1),
    ("DVMSR RSSB-2D x4 64", "dvmsr_rssb2d", {}, (3, 64, 64), 1),
    ("ResNet-18 224", "resnet18", dict(num_classes=200), (3, 224, 224), 8),
    ("ResNet-34 224", "resnet34", dict(num_classes=200), (3, 224, 224), 8),
]
QUICK = [
    ("ViM micro 32", "vim_micro", {}, (3, 32, 32), 8),
    ("SRVM micro 16->64", "srvm_net", dict(num_classes=10, sr_arch="srresnet_micro", img_size=64, embed_dim=48,
                                           depth=4, d_state=8, patch_size=8), (3, 16, 16), 8),
    ("SRResNet micro 16", "srresnet_micro", {}, (3, 16, 16), 8),
    ("DVMSR micro 16", "dvmsr_micro", {}, (3, 16, 16), 2),
    ("DVMSR RSSB-2D micro 16", "dvmsr_rssb2d_micro", {}, (3, 16, 16), 2),
    ("ResNet micro 32", "resnet_micro", {}, (3, 32, 32), 8),
]


def _time(fn, warmup: int, repeats: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def run_one(name: str, kwargs: dict, shape: tuple, batch: int, backend: str, device: str,
            warmup: int, repeats: int) -> dict:
    """Runs in a child process: build, count, time forward and a training step."""
    import torch
    import vimd_models as vm
    from vimd_models.flops import count_flops

    torch.manual_seed(0)
    model = vm.create_model(name, backend=backend, **kwargs).to(device)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, (1, *shape))
    x = torch.rand(batch, *shape, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.eval()
    with torch.no_grad():
        fwd = _time(lambda: model(x), warmup, repeats, sync)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        out.float().pow(2).mean().backward()
        opt.step()

    train = _time(step, min(warmup, 1), max(1, repeats // 2), sync)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return dict(model=name, backend=backend, device=device, batch=batch, input=list(shape), params=params,
                gmacs_counter=flops["counter"] / 1e9, gmacs_full=flops["full"] / 1e9,
                fwd_ms=fwd * 1e3, images_per_s=batch / fwd, train_step_ms=train * 1e3,
                peak_mem_mb=peak / 2 ** 20)


def _env(device: str) -> dict:
    return dict(metadata(device), cpu_count=os.cpu_count())


def main(argv=None, prog="python -m vimd_models.bench") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="micro variants (seconds on a laptop CPU)")
    ap.add_argument("--backends", default=None, help="comma list (default: every available one but triton)")
    ap.add_argument("--models", default=None, help="comma list of registry names to keep")
    ap.add_argument("--device", default=None)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-models", default="vim_tiny_patch16_224,vim_micro",
                    help="models also timed on the slow reference backend (comma list, 'all')")
    ap.add_argument("--out", default=DEFAULT_OUT, help=OUT_HELP)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        job = json.loads(args._child)
        print("RESULT " + json.dumps(run_one(**job)))
        return 0

    import torch
    from vimd_kernels import available_backends
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backends = (args.backends.split(",") if args.backends else
                [b for b in available_backends() if b != "triton" and (device == "cuda") == (b == "cuda")
                 or (b == "ref")])
    cases = QUICK if args.quick else FULL
    if args.models:
        keep = set(args.models.split(","))
        cases = [c for c in cases if c[1] in keep]
    rows = []
    for label, name, kw, shape, batch in cases:
        uses_kernels = not name.startswith(("resnet", "srresnet"))
        with_ref = args.ref_models == "all" or name in args.ref_models.split(",")
        mine = [b for b in backends if b != "ref" or with_ref] or backends[:1]
        for b in (mine if uses_kernels else mine[:1]):
            job = dict(name=name, kwargs=kw, shape=shape, batch=batch, backend=b, device=device,
                       warmup=args.warmup, repeats=args.repeats)
            proc = subprocess.run([sys.executable, "-m", "vimd_models.bench", "--_child", json.dumps(job)],
                                  capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{label} [{b}] FAILED:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            row = dict(label=label, **json.loads(line[7:]))
            if not uses_kernels:
                row["backend"] = "-"
            rows.append(row)
            print(f"{label:34s} {row['backend']:4s} b={batch:<2d} {row['images_per_s']:9.2f} img/s "
                  f"fwd {row['fwd_ms']:9.1f} ms  train {row['train_step_ms']:9.1f} ms  "
                  f"peak {row['peak_mem_mb']:7.0f} MB  params {row['params']:>10,d}  "
                  f"GMACs {row['gmacs_counter']:.3f} / {row['gmacs_full']:.3f}", flush=True)
    env = _env(device)
    vim = {r["backend"]: r["fwd_ms"] for r in rows if r["model"] in ("vim_tiny_patch16_224", "vim_micro")}
    if "ref" in vim and "cpu" in vim:
        env["vim_cpu_speedup_vs_ref"] = vim["ref"] / vim["cpu"]
        print(f"ViM forward, cpu backend vs ref: {env['vim_cpu_speedup_vs_ref']:.1f}x faster (same run)")
    out = results_dir(args.out, env["device"])
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, "models_quick" if args.quick else "models")
    with open(stem + ".json", "w") as f:
        json.dump(dict(env=env, rows=rows), f, indent=1)
    if rows:
        with open(stem + ".csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()} for r in rows)
    print(f"wrote {stem}.json/.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
