"""Where the time goes: ``python -m tools.gpu.profile_kernels [--jobs ...] [--out DIR]``.

Runs a few (op, shape, dtype, provider) jobs of vimd_kernels/bench/kernels.py fwd+bwd under
``torch.profiler`` and prints, per job, the GPU kernels by total time per iteration (name, calls,
microseconds, share) — e.g. our scan's summary / main / combine / reduction passes next to
mamba_ssm's kernels and the copies around them. On the CPU it lists the ops by self time instead
(a smoke test). Results: a table on stdout and ``profile.json`` in ``--out``.

A job is ``op:shape:dtype:provider``; the default jobs are the bar shapes of the GPU check.

``--ncu``: the target for Nsight Compute instead (``ncu --profile-from-start off ... python -m
tools.gpu.profile_kernels --ncu``): each job's fwd+bwd is warmed up, then run once between
``cudaProfilerStart`` and ``cudaProfilerStop``, so ncu sees each of its kernels once and nothing
else; no torch.profiler (it and ncu both need CUPTI).  ``gpu_check.sh``'s ``ncu`` stage runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

import torch

from vimd_kernels.bench import common, kernels, shapes

DEFAULT_JOBS = [
    f"{op}:{shape}:float32:{prov}"
    for op, shape, provs in (("selective_scan", "vim-ti-s16", ("cuda", "mamba_ssm")),
                             ("selective_scan", "vim-s-s8", ("cuda", "mamba_ssm")),
                             ("selective_scan", "dvmsr-256", ("cuda", "mamba_ssm")),
                             ("bimamba_inner", "vim-ti-s16", ("cuda", "mamba_ssm_composed")),
                             ("causal_conv1d", "vim-ti-s16", ("cuda", "causal_conv1d")))
    for prov in provs]


def parse_job(spec: str) -> tuple[str, str, str, str]:
    parts = spec.split(":")
    if len(parts) != 4:
        raise SystemExit(f"--jobs: {spec!r} is not op:shape:dtype:provider")
    op, shape, dtype, prov = parts
    for name, value, known in (("op", op, kernels.OPS), ("dtype", dtype, kernels.DTYPES),
                               ("provider", prov, kernels.PROVIDERS)):
        if value not in known:
            raise SystemExit(f"--jobs: unknown {name} {value!r} in {spec!r}; choose from {', '.join(known)}")
    shapes.get(shape)  # raises with the known names
    return op, shape, dtype, prov


def profile_job(op: str, shape: str, dtype: str, provider: str, device: str, iters: int = 5,
                batch: int | None = None, ncu: bool = False) -> dict:
    """Per-iteration time by kernel (GPU) or op (CPU) of one fwd+bwd job; ``note`` when it cannot run.
    ``ncu``: one iteration inside the CUDA profiler range instead, nothing measured here."""
    w = shapes.get(shape)
    b = w.batch(device, batch)
    out = dict(op=op, shape=shape, dtype=dtype, provider=provider, batch=b, rows=[], total_us=0.0, note="")
    try:
        fn = kernels.provider_fn(provider, op, w, b, device)
        x = kernels._inputs(op, w, b, kernels.DTYPES[dtype], device)
        run = kernels.make_runner(fn, x, "fwd+bwd")
        for _ in range(3):
            run()
    except kernels.Unsupported as e:
        out["note"] = str(e)
        return out
    except Exception as e:  # a broken provider must not stop the other jobs
        out["note"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        return out
    if ncu:
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
        out["note"] = "ran once for ncu"
        return out
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    if device == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(iters):
            run()
        if device == "cuda":
            torch.cuda.synchronize()
    per_name: dict = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if device == "cuda":
            if e.device_type != DeviceType.CUDA:
                continue
            us = e.time_range.elapsed_us()
        else:
            if e.device_type != DeviceType.CPU or e.cpu_parent is not None:
                continue  # top-level CPU ops only
            us = e.self_cpu_time_total
        per_name[e.name][0] += 1
        per_name[e.name][1] += us
    total = sum(us for _, us in per_name.values()) / iters
    out["total_us"] = total
    out["rows"] = sorted(({"name": name, "calls": calls / iters, "us": us / iters,
                           "share": us / iters / total if total else 0.0}
                          for name, (calls, us) in per_name.items()), key=lambda r: -r["us"])
    return out


def _short(name: str, width: int = 90) -> str:
    name = name.replace("vimd::cuda::", "").replace("(anonymous namespace)::", "")
    return name if len(name) <= width else name[:width - 3] + "..."


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m tools.gpu.profile_kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", nargs="+", help="op:shape:dtype:provider (default: the GPU bar shapes)")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    ap.add_argument("--batch", type=int, help="override every workload's batch")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--top", type=int, default=12, help="kernels listed per job")
    ap.add_argument("--out", help="folder for profile.json (default: no file)")
    ap.add_argument("--ncu", action="store_true",
                    help="run each job once inside cudaProfilerStart/Stop, for ncu --profile-from-start off")
    a = ap.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    jobs = [parse_job(j) for j in (a.jobs or DEFAULT_JOBS)]
    meta = common.metadata(device)
    print(f"# {common.summary_line(meta)}", flush=True)
    results = []
    for op, shape, dtype, prov in jobs:
        r = profile_job(op, shape, dtype, prov, device, a.iters, a.batch, a.ncu)
        results.append(r)
        head = f"## {op} {shape} (batch {r['batch']}) {dtype} fwd+bwd, {prov}"
        if r["note"]:
            print(f"{head}: {r['note']}", flush=True)
            continue
        print(f"{head}: {r['total_us']:.1f} us of {'kernels' if device == 'cuda' else 'ops'} per iteration")
        for row in r["rows"][:a.top]:
            print(f"  {row['us']:10.1f} us {100 * row['share']:5.1f}%  x{row['calls']:<5g} {_short(row['name'])}")
        sys.stdout.flush()
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "profile.json"), "w") as f:
            json.dump({"meta": meta, "jobs": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
