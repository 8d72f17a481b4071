"""Model benchmark: images/s (forward), ms per training step, peak memory, params, FLOPs (counter
and full), per family, backend and dtype. ``vimd bench models [--quick] [--backends ref,cpu]`` (or
``python -m vimd_models.bench ...``).

Each (model, backend, dtype) runs in its own subprocess so its peak memory (CUDA: max allocated;
CPU: the subprocess's peak RSS) is its own; ``--in-process`` times them all in this process (one
start-up: CUDA peaks from a reset of the allocator's statistics before each; CPU peaks are then not
measured). ``--dtypes float32,bfloat16``: bfloat16 runs the forward passes under bfloat16 autocast,
as training with ``train.amp: bf16`` does. ``--train-only`` times the training step alone (no
forward timing, no FLOP count). ``--budget-s`` starts no new case after that many seconds (the rest
are listed as skipped) and runs the cases backend by backend, in the order of ``--backends``.

Backend ``mamba_ssm`` (CUDA, where mamba_ssm and causal_conv1d import): the same model, weights and
code with only its Mamba mixers' kernel op replaced by the upstream kernels (``peer_mixers``).

Results: a table on stdout and CSV/JSON in ``--out`` (default ./vimd-bench/<device>/),
models{_quick}.{csv,json}, with device, versions and git sha; then, per model and dtype, each
backend's training step against ``mamba_ssm`` (else ``ref``) timed in the same run (``speedups``).
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
DTYPES = ("float32", "bfloat16")   # bfloat16: autocast, as train.amp: bf16
PEER = "mamba_ssm"                 # the upstream kernels, as a backend of the same model
BASELINES = (PEER, "ref")          # what the speed-ups are against: the first one timed


class Unsupported(Exception):
    """A case that cannot run here; the message says why."""


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


def peer_ops():
    """(mamba_ssm's selective_scan_interface module, causal_conv1d's causal_conv1d_fn), or
    Unsupported naming what does not import."""
    from vimd_kernels.bench.kernels import import_peer, not_installed
    try:
        msi = import_peer("mamba_ssm.ops.selective_scan_interface")
        from causal_conv1d import causal_conv1d_fn
    except ImportError as e:
        raise Unsupported(f"{PEER}: {not_installed(e)}") from None
    return msi, causal_conv1d_fn


def peer_mixers(msi, causal_conv1d_fn) -> dict:
    """{bimamba_type: mixer op} with the call of vimd's fused mixer ops (``layers.mamba.FusedBody``),
    on the upstream kernels of ``msi`` (mamba_ssm.ops.selective_scan_interface) and
    ``causal_conv1d_fn``:

    - "none": ``msi.mamba_inner_fn``, mamba_ssm's own fused mixer (its Mamba's fast path);
    - "v2" (ViM): each direction's body before out_proj by ``msi.mamba_inner_fn_no_out_proj`` where
      the module has it (hustvl/Vim's fork of mamba_ssm), else composed of ``msi.selective_scan_fn``
      and ``causal_conv1d_fn`` (conv + SiLU, x_proj, dt_proj, z-gated scan; the kernel benchmark's
      mamba_ssm_composed); the reverse direction runs on the flipped xz, then one out_proj of the
      directions' mean, as Vim's v2 mixer with if_divide_out.
    """
    import torch.nn.functional as F

    from vimd_kernels.bench.kernels import peer_kernels
    from vimd_kernels.mamba_inner.body import inner_core

    def uni(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, D, delta_bias,
            out_proj_weight, out_proj_bias=None, backend=None):
        return msi.mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                                  out_proj_weight, out_proj_bias, A, None, None, D, delta_bias,
                                  delta_softplus=True)

    no_out_proj = getattr(msi, "mamba_inner_fn_no_out_proj", None)
    scan, conv = peer_kernels(msi.selective_scan_fn, causal_conv1d_fn)

    def body(xz, w: dict, s: str):
        args = (w["conv1d_weight" + s], w["conv1d_bias" + s], w["x_proj_weight" + s],
                w["delta_proj_weight" + s], w["A" + s])
        if no_out_proj is not None:
            return no_out_proj(xz, *args, None, None, w["D" + s], w["delta_bias" + s], delta_softplus=True)
        return inner_core(xz, *args, None, None, w["D" + s], w["delta_bias" + s], True, False,
                          scan=scan, conv=conv)

    def bi(xz, out_proj_weight, out_proj_bias=None, backend=None, **w):
        y = (body(xz, w, "") + body(xz.flip(-1), w, "_b").flip(-1)) * 0.5
        return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)

    return {"none": uni, "v2": bi}


def use_mixers(model, mixers: dict, name: str = PEER) -> int:
    """Point every Mamba mixer of ``model`` at ``mixers[its bimamba_type]`` (``peer_mixers``); the
    number of mixers replaced. Unsupported when a kernel-calling layer has no replacement."""
    from .layers.mamba import Mamba
    from .layers.ss2d import SS2D
    n = 0
    for m in model.modules():
        if isinstance(m, SS2D):
            raise Unsupported(f"{name}: no upstream op for {type(m).__name__} (the 2-D selective scan)")
        if isinstance(m, Mamba):
            if m.bimamba_type not in mixers or not m.use_fast_path:
                raise Unsupported(f"{name}: no upstream op for bimamba_type={m.bimamba_type!r} "
                                  f"(use_fast_path={m.use_fast_path})")
            m.fused.fn = mixers[m.bimamba_type]
            n += 1
    if not n:
        raise Unsupported(f"{name}: the model has no Mamba mixer")
    return n


def run_one(name: str, kwargs: dict, shape: tuple, batch: int, backend: str, device: str,
            warmup: int, repeats: int, dtype: str = "float32", train_only: bool = False) -> dict:
    """Build, count, time forward and a training step (in a child process, or in this one with
    --in-process). Unsupported when the case cannot run here."""
    import contextlib

    import torch

    import vimd_models as vm
    from vimd_models.flops import count_flops

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    mixers = None
    if backend == PEER:
        if device != "cuda":
            raise Unsupported(f"{PEER}: GPU only")
        mixers = peer_mixers(*peer_ops())
    torch.manual_seed(0)
    model = vm.create_model(name, backend=None if mixers else backend, **kwargs).to(device)
    params = sum(p.numel() for p in model.parameters())
    flops = None if train_only else count_flops(model, (1, *shape))
    if mixers:
        use_mixers(model, mixers)
    x = torch.rand(batch, *shape, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    autocast = ((lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bfloat16"
                else contextlib.nullcontext)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fwd = None
    if not train_only:
        model.eval()

        def forward():
            with torch.no_grad(), autocast():
                model(x)

        fwd = _time(forward, warmup, repeats, sync)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
        out.float().pow(2).mean().backward()
        opt.step()

    train = (_time(step, max(warmup, 1), max(1, repeats), sync) if train_only
             else _time(step, min(warmup, 1), max(1, repeats // 2), sync))
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return dict(model=name, backend=backend, dtype=dtype, device=device, batch=batch, input=list(shape),
                params=params, gmacs_counter=flops["counter"] / 1e9 if flops else None,
                gmacs_full=flops["full"] / 1e9 if flops else None,
                fwd_ms=fwd * 1e3 if fwd else None, images_per_s=batch / fwd if fwd else None,
                train_step_ms=train * 1e3, train_images_per_s=batch / train, peak_mem_mb=peak / 2 ** 20)


def _env(device: str) -> dict:
    return dict(metadata(device), cpu_count=os.cpu_count())


def parse_batch(spec: str | None) -> dict:
    """``--batch``: "64" (every model) or "vim_tiny_patch16_224=64,dvmsr=16" -> {name or "*": batch}."""
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        name, _, value = part.rpartition("=")
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise SystemExit(f"--batch: expected N or MODEL=N with N >= 1, got {part!r}")
        out[name or "*"] = n
    return out


def speedups(rows: list[dict], baselines=BASELINES) -> list[dict]:
    """Per (model, dtype): each backend's training step and peak memory against the first of
    ``baselines`` timed for that model and dtype (time ratio = baseline / ours: > 1 is faster;
    memory ratio = ours / baseline: < 1 is less)."""
    out = []
    keys = list(dict.fromkeys((r["model"], r.get("dtype", "float32")) for r in rows))
    for model, dtype in keys:
        cell = {r["backend"]: r for r in rows if r["model"] == model and r.get("dtype", "float32") == dtype}
        base = next((b for b in baselines if b in cell), None)
        if base is None:
            continue
        ref = cell[base]
        for backend, r in cell.items():
            if backend == base or backend in baselines:
                continue
            mem = (r["peak_mem_mb"] / ref["peak_mem_mb"]
                   if r.get("peak_mem_mb") and ref.get("peak_mem_mb") else None)
            out.append(dict(model=model, label=r.get("label", model), dtype=dtype, batch=r["batch"],
                            backend=backend, vs=base, train_step_ms=r["train_step_ms"],
                            vs_train_step_ms=ref["train_step_ms"],
                            train_speedup=ref["train_step_ms"] / r["train_step_ms"],
                            peak_mem_mb=r.get("peak_mem_mb"), vs_peak_mem_mb=ref.get("peak_mem_mb"),
                            mem_ratio=mem))
    return out


def speedup_line(s: dict) -> str:
    mem = "" if s["mem_ratio"] is None else (f"; peak memory {s['peak_mem_mb']:.0f} vs {s['vs_peak_mem_mb']:.0f} MB "
                                             f"({s['mem_ratio']:.2f}x)")
    return (f"{s['label']} {s['dtype']} b={s['batch']}: training step {s['backend']} {s['train_step_ms']:.1f} ms "
            f"vs {s['vs']} {s['vs_train_step_ms']:.1f} ms = {s['train_speedup']:.2f}x{mem}")


def _fmt(v, spec: str, width: int) -> str:
    return format(v, spec) if v is not None else "-".rjust(width)


def _row_line(label: str, row: dict) -> str:
    mem = "-" if row["peak_mem_mb"] is None else f"{row['peak_mem_mb']:.0f}"
    gmacs = ("" if row["gmacs_counter"] is None else
             f"  GMACs {row['gmacs_counter']:.3f} / {row['gmacs_full']:.3f}")
    return (f"{label:34s} {row['backend']:9s} {row.get('dtype', 'float32'):8s} b={row['batch']:<2d} "
            f"{_fmt(row['images_per_s'], '9.2f', 9)} img/s fwd {_fmt(row['fwd_ms'], '9.1f', 9)} ms  "
            f"train {row['train_step_ms']:9.1f} ms  peak {mem:>7s} MB  params {row['params']:>10,d}{gmacs}")


def _run_child(job: dict) -> tuple[dict | None, str | None]:
    proc = subprocess.run([sys.executable, "-m", "vimd_models.bench", "--_child", json.dumps(job)],
                          capture_output=True, text=True)
    for ln in proc.stdout.splitlines():
        if ln.startswith("RESULT "):
            return json.loads(ln[7:]), None
        if ln.startswith("UNSUPPORTED "):
            return None, ln[12:]
    return None, "FAILED:\n" + proc.stderr[-2000:]


def _run_here(job: dict) -> tuple[dict | None, str | None]:
    import gc

    import torch
    try:
        return run_one(**job), None
    except Unsupported as e:
        return None, str(e)
    except Exception as e:  # one case failing must not lose the others' results
        return None, f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(argv=None, prog="python -m vimd_models.bench") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="micro variants (seconds on a laptop CPU)")
    ap.add_argument("--backends", default=None,
                    help=f"comma list (default: every available one but triton); {PEER}: the upstream kernels")
    ap.add_argument("--models", default=None, help="comma list of registry names to keep")
    ap.add_argument("--dtypes", default="float32", help=f"comma list of {', '.join(DTYPES)} (bfloat16: autocast)")
    ap.add_argument("--batch", default=None, help="batch size for every model (N) or per model (name=N,...)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-only", action="store_true", help="time the training step only (no forward, no FLOPs)")
    ap.add_argument("--in-process", action="store_true", help="every case in this process (CPU: no peak memory)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no case after this many seconds")
    ap.add_argument("--ref-models", default="vim_tiny_patch16_224,vim_micro",
                    help="models also timed on the slow reference backend (comma list, 'all')")
    ap.add_argument("--out", default=DEFAULT_OUT, help=OUT_HELP)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        job = json.loads(args._child)
        try:
            print("RESULT " + json.dumps(run_one(**job)))
        except Unsupported as e:
            print(f"UNSUPPORTED {e}")
        return 0

    import torch
    from vimd_kernels import available_backends
    t0 = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = args.dtypes.split(",")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise SystemExit(f"--dtypes: unknown {', '.join(bad)} (known: {', '.join(DTYPES)})")
    batches = parse_batch(args.batch)
    backends = (args.backends.split(",") if args.backends else
                [b for b in available_backends() if b != "triton" and (device == "cuda") == (b == "cuda")
                 or (b == "ref")])
    cases = QUICK if args.quick else FULL
    if args.models:
        keep = set(args.models.split(","))
        cases = [c for c in cases if c[1] in keep]
    jobs = []  # (label, uses_kernels, job)
    for label, name, kw, shape, batch in cases:
        uses_kernels = not name.startswith(("resnet", "srresnet"))
        with_ref = args.ref_models == "all" or name in args.ref_models.split(",")
        mine = [b for b in backends if b != "ref" or with_ref] or backends[:1]
        for b in (mine if uses_kernels else mine[:1]):
            for dt in dtypes:
                jobs.append((label, uses_kernels, dict(
                    name=name, kwargs=kw, shape=shape, batch=batches.get(name, batches.get("*", batch)),
                    backend=b, device=device, warmup=args.warmup, repeats=args.repeats, dtype=dt,
                    train_only=args.train_only)))
    if args.budget_s is not None:  # backend by backend, so that the budget cuts the last backends given
        jobs.sort(key=lambda j: backends.index(j[2]["backend"]))
    env = _env(device)
    out = results_dir(args.out, env["device"])
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, "models_quick" if args.quick else "models")
    rows, skipped = [], []
    for label, uses_kernels, job in jobs:
        what = f"{label} [{job['backend']} {job['dtype']}]"
        if args.budget_s is not None and time.perf_counter() - t0 > args.budget_s:
            skipped.append(f"{what}: over budget (--budget-s {args.budget_s:g})")
            continue
        row, why = _run_here(job) if args.in_process else _run_child(job)
        if row is None:
            if why.startswith("FAILED"):
                print(f"{what} {why}", file=sys.stderr)
            skipped.append(f"{what}: {why.splitlines()[0]}")
        else:
            row = dict(label=label, **row)
            if args.in_process and device != "cuda":
                row["peak_mem_mb"] = None  # one process: its peak RSS is every case's
            if not uses_kernels:
                row["backend"] = "-"
            rows.append(row)
            print(_row_line(label, row), flush=True)
        _write(stem, env, rows, skipped)  # after every case: an interrupted run keeps what it timed
    vim = {r["backend"]: r["fwd_ms"] for r in rows
           if r["model"] in ("vim_tiny_patch16_224", "vim_micro") and r["dtype"] == "float32" and r["fwd_ms"]}
    if "ref" in vim and "cpu" in vim:
        env["vim_cpu_speedup_vs_ref"] = vim["ref"] / vim["cpu"]
        print(f"ViM forward, cpu backend vs ref: {env['vim_cpu_speedup_vs_ref']:.1f}x faster (same run)")
    _write(stem, env, rows, skipped)
    for line in env["speedup_lines"]:
        print(line)
    print("# skipped: " + ("none" if not skipped else ""))
    for s in skipped:
        print(f"#   {s}")
    print(f"wrote {stem}.json/.csv")
    return 0


def _write(stem: str, env: dict, rows: list[dict], skipped: list[str]) -> None:
    """STEM.json (env with the speed-ups and the cases not timed, rows) and STEM.csv (rows)."""
    env["speedups"] = speedups(rows)
    env["speedup_lines"] = [speedup_line(s) for s in env["speedups"]]
    env["skipped"] = skipped
    with open(stem + ".json", "w") as f:
        json.dump(dict(env=env, rows=rows), f, indent=1)
    if rows:
        with open(stem + ".csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()} for r in rows)

if __name__ == "__main__":
    sys.exit(main())
