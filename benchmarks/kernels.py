"""Kernel benchmarks: ``python -m benchmarks.kernels [--ops ...] [--shapes ...] [--providers ...] [--quick]``.

Times selective_scan, causal_conv1d, mamba_inner and bimamba_inner (fwd and fwd+bwd) on the
workloads of benchmarks/shapes.py for every provider that is importable here, and writes a table
to stdout plus CSV/JSON/PNG under benchmarks/results/<device>/.  ``--preset cpu-bar`` is the
issue's CPU perf bar: cpu vs mambapy vs ref, fwd+bwd, u = (8, 384, 197), N = 16, float32.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks import common, shapes
from benchmarks.shapes import Workload

OPS = ("selective_scan", "causal_conv1d", "mamba_inner", "bimamba_inner")
MODES = ("fwd", "fwd+bwd")
OURS = ("cpu", "triton", "cuda")
PEERS = ("ref", "compiled_ref", "mambapy", "mamba_ssm", "causal_conv1d")
PROVIDERS = ("ref", "compiled_ref", "cpu", "triton", "cuda", "mambapy", "mamba_ssm", "causal_conv1d")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# The reference and mambapy materialise several (batch, dim, L, N) float32 tensors and the reference
# walks L in Python: above these sizes they are skipped (and the table says so).
REF_BUDGET = {"cpu": 2 ** 25, "cuda": 2 ** 28}   # batch * dim * L * N elements
COMPILE_MAX_L = 256                               # torch.compile unrolls the reference's L loop

PRESETS = {
    "cpu-bar": dict(ops=["selective_scan"], shapes=["cpu-row"], providers=["cpu", "mambapy", "ref"],
                    modes=["fwd+bwd"], dtype="float32", device="cpu"),
}


class Unsupported(Exception):
    """This provider cannot run this op/shape here (the message says why)."""


# ----------------------------------------------------------------------------- inputs

def scan_inputs(w: Workload, batch: int, dtype, device) -> dict:
    g = torch.Generator().manual_seed(0)
    d, L, N = w.d_inner, w.L, w.N
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    bc = (batch, w.groups, N, L) if w.groups else (batch, N, L)
    x = dict(u=r(batch, d, L).to(dtype), delta=(0.5 * r(batch, d, L) - 1).to(dtype),
             A=-torch.exp(torch.log(torch.arange(1, N + 1.0)).repeat(d, 1)),
             B=r(*bc).to(dtype), C=r(*bc).to(dtype), D=r(d), z=r(batch, d, L).to(dtype),
             delta_bias=0.1 * torch.rand(d, generator=g) + 0.01)
    return {k: v.to(device) for k, v in x.items()}


def conv_inputs(w: Workload, batch: int, dtype, device) -> dict:
    g = torch.Generator().manual_seed(0)
    x = dict(x=torch.randn(batch, w.d_inner, w.L, generator=g).to(dtype),
             weight=torch.randn(w.d_inner, 4, generator=g) / 2, bias=torch.randn(w.d_inner, generator=g))
    return {k: v.to(device) for k, v in x.items()}


def _branch(w: Workload, g) -> dict:
    d, N, rank = w.d_inner, w.N, w.dt_rank
    return dict(conv1d_weight=torch.randn(d, 1, 4, generator=g) / 2,
                conv1d_bias=torch.randn(d, generator=g) * 0.1,
                x_proj_weight=torch.randn(rank + 2 * N, d, generator=g) / d ** 0.5,
                delta_proj_weight=torch.randn(d, rank, generator=g) / rank ** 0.5,
                A=-torch.exp(torch.log(torch.arange(1, N + 1.0)).repeat(d, 1)),
                D=torch.ones(d), delta_bias=torch.rand(d, generator=g) * 0.5 - 2.0)


def mixer_inputs(w: Workload, batch: int, dtype, device, bidirectional: bool) -> dict:
    if dtype != torch.float32:
        raise Unsupported("mixers are benchmarked in float32 (weights and xz share a dtype)")
    g = torch.Generator().manual_seed(0)
    x = dict(xz=torch.randn(batch, 2 * w.d_inner, w.L, generator=g), **_branch(w, g),
             out_proj_weight=torch.randn(w.d_model, w.d_inner, generator=g) / w.d_inner ** 0.5)
    if bidirectional:
        x.update({k + "_b": v for k, v in _branch(w, g).items()})
    return {k: v.to(device) for k, v in x.items()}


# ----------------------------------------------------------------------------- providers

def _mambapy_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The SAME selective scan as selective_scan_fn, computed with mambapy's parallel scan (autograd
    through its PScan): deltaA = exp(delta A), deltaBu = delta B u, h = pscan, y = <h, C> + D u,
    y *= silu(z).  Layout (batch, L, dim, N) as mambapy wants; B/C variable or grouped."""
    from mambapy.pscan import pscan

    batch, dim, L = u.shape
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    dt = dt.transpose(1, 2)                                   # (b, L, d)
    uf = u.float().transpose(1, 2)

    def per_channel(X):                                       # (b, L, d or 1, N)
        if X.dim() == 3:
            return X.float().permute(0, 2, 1).unsqueeze(2)
        groups = X.shape[1]
        return X.float().permute(0, 3, 1, 2).repeat_interleave(dim // groups, dim=2)

    Bc, Cc = per_channel(B), per_channel(C)
    delta_a = torch.exp(dt.unsqueeze(-1) * A)                 # (b, L, d, N)
    delta_bu = dt.unsqueeze(-1) * Bc * uf.unsqueeze(-1)
    hs = pscan(delta_a, delta_bu)
    y = (hs * Cc).sum(-1)
    if D is not None:
        y = y + D * uf
    if z is not None:
        y = y * F.silu(z.float().transpose(1, 2))
    return y.transpose(1, 2).to(u.dtype)


def _call_scan(fn, x, **kw):
    return fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, **kw)


def _call_conv(fn, x, **kw):
    return fn(x["x"], x["weight"], x["bias"], "silu", **kw)


def _call_mamba(fn, x, **kw):
    return fn(x["xz"], x["conv1d_weight"], x["conv1d_bias"], x["x_proj_weight"], x["delta_proj_weight"],
              x["out_proj_weight"], None, x["A"], None, None, x["D"], x["delta_bias"], True, **kw)


def _call_bimamba(fn, x, **kw):
    return fn(x["xz"], x["conv1d_weight"], x["conv1d_bias"], x["x_proj_weight"], x["delta_proj_weight"],
              x["A"], x["D"], x["delta_bias"], x["conv1d_weight_b"], x["conv1d_bias_b"],
              x["x_proj_weight_b"], x["delta_proj_weight_b"], x["A_b"], x["D_b"], x["delta_bias_b"],
              x["out_proj_weight"], None, True, **kw)


CALL = {"selective_scan": _call_scan, "causal_conv1d": _call_conv, "mamba_inner": _call_mamba,
        "bimamba_inner": _call_bimamba}
KERNELS_OF = {"selective_scan": ("selective_scan",), "causal_conv1d": ("causal_conv1d",),
              "mamba_inner": ("selective_scan", "causal_conv1d"),
              "bimamba_inner": ("selective_scan", "causal_conv1d")}


def _ref_fn(op: str):
    import vimd_kernels as vk
    return {"selective_scan": vk.selective_scan_ref, "causal_conv1d": vk.causal_conv1d_ref,
            "mamba_inner": vk.mamba_inner_ref, "bimamba_inner": vk.bimamba_inner_ref}[op]


_COMPILED: dict = {}


def provider_fn(provider: str, op: str, w: Workload, batch: int, device: str) -> Callable:
    """A callable f(inputs) -> output(s) for ``provider``, or Unsupported with the reason."""
    from vimd_kernels import registry
    elems = batch * w.d_inner * w.L * w.N
    if provider in ("ref", "compiled_ref", "mambapy") and elems > REF_BUDGET[device]:
        raise Unsupported(f"skipped: over the size budget ({elems / 1e6:.0f}M > "
                          f"{REF_BUDGET[device] / 1e6:.0f}M batch*dim*L*N)")
    if provider == "ref":
        fn = _ref_fn(op)
        return lambda x: CALL[op](fn, x)
    if provider == "compiled_ref":
        if w.L > COMPILE_MAX_L:
            raise Unsupported(f"skipped: torch.compile unrolls the reference's L loop (L > {COMPILE_MAX_L})")
        key = (op, device)
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(_ref_fn(op))
        fn = _COMPILED[key]
        return lambda x: CALL[op](fn, x)
    if provider in OURS:
        b = registry.BACKENDS[provider]
        if device not in b.devices:
            raise Unsupported(f"runs on {'/'.join(b.devices)} only")
        if provider == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise Unsupported("CPU tensors need TRITON_INTERPRET=1 (the interpreter; not a benchmark)")
        missing = [k for k in KERNELS_OF[op] if not registry.kernel_available(k, provider)]
        if missing:
            raise Unsupported(f"unavailable ({', '.join(missing)}): {b.install_hint}")
        import vimd_kernels as vk
        fn = {"selective_scan": vk.selective_scan_fn, "causal_conv1d": vk.causal_conv1d_fn,
              "mamba_inner": vk.mamba_inner_fn, "bimamba_inner": vk.bimamba_inner_fn}[op]
        return lambda x: CALL[op](fn, x, backend=provider)
    if provider == "mambapy":
        if op != "selective_scan":
            raise Unsupported("mambapy provides the scan only")
        try:
            import mambapy.pscan  # noqa: F401
        except ImportError:
            raise Unsupported("not installed: pip install mambapy") from None
        return lambda x: CALL[op](_mambapy_scan, x)
    if provider in ("mamba_ssm", "causal_conv1d"):
        if device != "cuda":
            raise Unsupported("GPU only")
        try:
            if provider == "causal_conv1d":
                if op != "causal_conv1d":
                    raise Unsupported("causal_conv1d provides the conv only")
                from causal_conv1d import causal_conv1d_fn as fn
                return lambda x: fn(x["x"], x["weight"], x["bias"], activation="silu")
            from mamba_ssm.ops import selective_scan_interface as msi
        except ImportError:
            raise Unsupported(f"not installed ({provider})") from None
        if op == "selective_scan":
            return lambda x: CALL[op](msi.selective_scan_fn, x)
        if op == "mamba_inner":
            return lambda x: CALL[op](msi.mamba_inner_fn, x)
        if op == "bimamba_inner" and hasattr(msi, "bimamba_inner_fn"):
            return lambda x: CALL[op](msi.bimamba_inner_fn, x)
        raise Unsupported(f"{provider} has no {op}")
    raise ValueError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")


# ----------------------------------------------------------------------------- bytes model

def min_bytes(op: str, w: Workload, batch: int, dtype, mode: str) -> int:
    """Bytes the minimal algorithm must move: every input read once, every output written once."""
    e = torch.tensor([], dtype=dtype).element_size()
    d, L, N = w.d_inner, w.L, w.N
    act = batch * d * L * e                                   # one (batch, dim, L) activation
    if op == "selective_scan":
        bc = batch * max(w.groups, 1) * N * L * e
        params = (d * N + 2 * d) * 4                          # A, D, delta_bias (float32)
        fwd = 3 * act + 2 * bc + params + act                 # u, delta, z, B, C, params -> out
        bwd = 4 * act + 2 * bc + params + 3 * act + 2 * bc + params  # + dout -> du, ddelta, dz, dB, dC
    elif op == "causal_conv1d":
        params = d * 5 * 4
        fwd = act + params + act
        bwd = 2 * act + params + act + params                 # x, dout -> dx, dweight, dbias
    else:
        branches = 2 if op == "bimamba_inner" else 1
        xz = 2 * act
        out = batch * L * w.d_model * e
        params = branches * 4 * (d * 4 + d + (w.dt_rank + 2 * N) * d + d * w.dt_rank + d * N + 2 * d) \
            + 4 * w.d_model * d
        fwd = xz + params + out
        bwd = xz + out + params + xz + params                 # xz, dout -> dxz, dweights
    return fwd if mode == "fwd" else fwd + bwd


# ----------------------------------------------------------------------------- running

@dataclass
class Job:
    op: str
    workload: Workload
    mode: str
    dtype: torch.dtype
    provider: str


def _inputs(op, w, batch, dtype, device):
    if op == "selective_scan":
        return scan_inputs(w, batch, dtype, device)
    if op == "causal_conv1d":
        return conv_inputs(w, batch, dtype, device)
    return mixer_inputs(w, batch, dtype, device, op == "bimamba_inner")


def make_runner(fn: Callable, x: dict, mode: str) -> Callable:
    """fwd: no-grad call.  fwd+bwd: forward then torch.autograd.grad of every output against fixed
    random cotangents, w.r.t. every floating input (no .grad accumulation between runs)."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(x)
        return run
    leaves = {k: v.detach().requires_grad_(True) for k, v in x.items()}
    with torch.no_grad():
        out = fn(x)
    outs = out if isinstance(out, tuple) else (out,)
    cot = [torch.randn_like(o) for o in outs]
    ins = list(leaves.values())

    def run():
        o = fn(leaves)
        o = o if isinstance(o, tuple) else (o,)
        return torch.autograd.grad(o, ins, cot, allow_unused=True)
    return run


def run_job(job: Job, device: str, batch_override, quick: bool, copy_bw: float | None) -> dict:
    w = job.workload
    batch = w.batch(device, batch_override)
    row = dict(op=job.op, shape=w.name, batch=batch, dim=w.d_inner, L=w.L, N=w.N,
               groups=w.groups, mode=job.mode, dtype=str(job.dtype).replace("torch.", ""),
               provider=job.provider, ms=math.nan, peak_mb=math.nan, gbps=math.nan,
               pct_copy=math.nan, note="")
    try:
        fn = provider_fn(job.provider, job.op, w, batch, device)
        x = _inputs(job.op, w, batch, job.dtype, device)
        run = make_runner(fn, x, job.mode)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        run()
        sync()
        t = common.time_fn(run, device, quick)
    except Unsupported as e:
        row["note"] = str(e)
        return row
    except Exception as e:  # a broken provider must not kill the whole sweep
        row["note"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        return row
    row["ms"] = t * 1e3
    row["peak_mb"] = common.peak_bytes(run, device) / 2 ** 20
    row["gbps"] = min_bytes(job.op, w, batch, job.dtype, job.mode) / t / 1e9
    if copy_bw:
        row["pct_copy"] = 100 * row["gbps"] * 1e9 / copy_bw
    return row


def add_speedups(rows: list[dict]) -> None:
    """For each (op, shape, mode, dtype): speed-up of every provider vs each other timed provider."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["op"], r["shape"], r["mode"], r["dtype"]), []).append(r)
    for members in groups.values():
        timed = [r for r in members if not math.isnan(r["ms"])]
        for r in timed:
            parts = []
            for p in timed:
                if p is r:
                    continue
                ratio = p["ms"] / r["ms"]
                r[f"speedup_vs_{p['provider']}"] = ratio
                if p["provider"] in PEERS or r["provider"] in OURS:
                    parts.append(f"{ratio:.2f}x vs {p['provider']}")
            r["speedup"] = ", ".join(parts)


def _split(values) -> list[str]:
    return [v for item in values or [] for v in item.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.splitlines()[0])
    p.add_argument("--ops", nargs="+", help=f"subset of {', '.join(OPS)}")
    p.add_argument("--shapes", nargs="+", help="workload names (benchmarks/shapes.py); default per device")
    p.add_argument("--providers", nargs="+", help=f"subset of {', '.join(PROVIDERS)}")
    p.add_argument("--modes", nargs="+", help="fwd and/or fwd+bwd")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--batch", type=int, help="override every workload's batch")
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--quick", action="store_true", help="tiny shape, few repetitions (smoke test)")
    p.add_argument("--out", help="results folder (default benchmarks/results/<device>)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--list", action="store_true", help="list workloads and exit")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    if a.list:
        for w in shapes.WORKLOADS.values():
            print(f"{w.name:16} dim={w.d_inner:5} L={w.L:6} N={w.N:3} groups={w.groups} "
                  f"batch gpu/cpu={w.gpu_batch}/{w.cpu_batch}  {w.note}")
        return []
    preset = PRESETS.get(a.preset, {})
    device = a.device or preset.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    ops = _split(a.ops) or preset.get("ops") or list(OPS)
    default_shapes = shapes.QUICK if a.quick else shapes.DEFAULTS[device]
    shape_names = _split(a.shapes) or preset.get("shapes") or default_shapes
    providers = _split(a.providers) or preset.get("providers") or list(PROVIDERS)
    modes = _split(a.modes) or preset.get("modes") or list(MODES)
    dtype = DTYPES[preset.get("dtype", a.dtype)]
    for name, values, known in (("--ops", ops, OPS), ("--providers", providers, PROVIDERS),
                                ("--modes", modes, MODES)):
        bad = [v for v in values if v not in known]
        if bad:
            raise SystemExit(f"{name}: unknown {bad}; choose from {', '.join(known)}")
    workloads = [shapes.get(s) for s in shape_names]

    meta = common.metadata(device)
    copy_bw = common.copy_bandwidth(device, 1 << (20 if a.quick else 28)) if device == "cuda" else None
    meta["copy_gbps"] = copy_bw / 1e9 if copy_bw else None
    meta["argv"] = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"# {meta['device']} | torch {meta['torch']} | triton {meta['triton']} | git {meta['git_sha']}"
          f" | {meta['date']} | threads {meta['threads']}"
          + (f" | d2d copy {meta['copy_gbps']:.0f} GB/s" if copy_bw else ""), flush=True)

    rows = []
    for op in ops:
        for w in workloads:
            for mode in modes:
                for prov in providers:
                    row = run_job(Job(op, w, mode, dtype, prov), device, a.batch, a.quick, copy_bw)
                    rows.append(row)
                    status = f"{row['ms']:.3f} ms" if not math.isnan(row["ms"]) else row["note"]
                    print(f"  {op} {w.name} {mode} {prov}: {status}", file=sys.stderr, flush=True)
    add_speedups(rows)

    cols = [("op", "op"), ("shape", "shape"), ("batch", "b"), ("dim", "dim"), ("L", "L"), ("N", "N"),
            ("mode", "mode"), ("provider", "provider"), ("ms", "ms"), ("peak_mb", "peak MB"),
            ("gbps", "GB/s")]
    if copy_bw:
        cols.append(("pct_copy", "% copy"))
    cols += [("speedup", "speed-up"), ("note", "note")]
    print(common.format_table(rows, cols))

    out_dir = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                    common.slug(meta["device"]))
    stem = "kernels" + (f"-{a.preset}" if a.preset else "") + ("-quick" if a.quick else "")
    paths = common.write_results(out_dir, stem, meta, rows)
    if not a.no_plot:
        png = common.plot_times(os.path.join(out_dir, stem + ".png"), rows,
                                f"{meta['device']} | {dtype} | torch {meta['torch']}")
        if png:
            paths["png"] = png
    print("# wrote " + ", ".join(paths.values()))
    if a.preset == "cpu-bar":
        _print_bar(rows)
    return rows


def _print_bar(rows: list[dict]) -> None:
    by = {r["provider"]: r for r in rows}
    cpu = by.get("cpu")
    r0 = rows[0]
    print(f"# CPU perf bar: selective_scan fwd+bwd, u=({r0['batch']}, {r0['dim']}, {r0['L']}), "
          f"N={r0['N']}, {r0['dtype']}, variable B/C, z, D, delta_bias, softplus")
    if cpu is None or math.isnan(cpu["ms"]):
        print(f"#   cpu backend not timed: {cpu['note'] if cpu else 'not requested'}")
        return
    for peer in ("mambapy", "ref"):
        p = by.get(peer)
        if p is None or math.isnan(p["ms"]):
            print(f"#   vs {peer}: not timed ({p['note'] if p else 'not requested'})")
            continue
        mem = (f"{p['peak_mb'] / cpu['peak_mb']:.2f}x" if cpu["peak_mb"] > 0 else "n/a")
        print(f"#   cpu {cpu['ms']:.2f} ms vs {peer} {p['ms']:.2f} ms: {p['ms'] / cpu['ms']:.2f}x faster; "
              f"peak memory {cpu['peak_mb']:.1f} MB vs {p['peak_mb']:.1f} MB ({mem} less)")


if __name__ == "__main__":
    main()
