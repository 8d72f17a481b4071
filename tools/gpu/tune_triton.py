"""Sweep the Triton kernels' tile knobs on a GPU: ``python -m tools.gpu.tune_triton [--op ...]``.

Times fwd+bwd of the Triton kernels for every variant of the launch-configuration knobs (scan:
block_d x backward segment x backward warps; conv: block_t x block_d x warps) at one workload,
and prints them fastest first next to the default configuration (the module's ``CONFIGS``), to
pick better defaults in one run. Each variant is a ``LaunchConfig`` per kernel passed to the
module's ``launch_forward`` / ``launch_backward``; nothing global is changed. A variant that fails
(too many resources, a compile error) is listed with its error.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys

import torch

from vimd_kernels.bench import common, kernels, shapes

# A knob is a LaunchConfig field, set in both kernels' configs, or "<kernel>_<field>" (fwd_, bwd_),
# set in that kernel's config only.
KNOBS = {
    "selective_scan": dict(block_d=(8, 16, 32, 64), seg=(16, 32, 64), bwd_warps=(4, 8)),
    "causal_conv1d": dict(block_t=(128, 256, 512), block_d=(4, 8, 16), warps=(4, 8)),
}


def tune_module(op: str):
    from vimd_kernels.causal_conv1d import triton as conv_triton
    from vimd_kernels.selective_scan import triton as scan_triton
    return {"selective_scan": scan_triton, "causal_conv1d": conv_triton}[op]


def variants(op: str, knobs: dict | None = None) -> list[dict]:
    """The default tiling (every knob None) first, then the cross product of the knobs."""
    knobs = knobs or KNOBS[op]
    names = list(knobs)
    return [dict.fromkeys(names)] + [dict(zip(names, vals)) for vals in itertools.product(*knobs.values())]


def configs(op: str, variant: dict) -> dict:
    """{"fwd": LaunchConfig, "bwd": LaunchConfig} of one variant: the module's CONFIGS with the
    variant's knobs set (a knob set to None keeps the default)."""
    mod = tune_module(op)
    out = {}
    for kernel, default in mod.CONFIGS.items():
        fields = {}
        for knob, value in variant.items():
            prefix, _, field = knob.partition("_")
            if value is None or (prefix in mod.CONFIGS and prefix != kernel):
                continue
            fields[field if prefix in mod.CONFIGS else knob] = value
        out[kernel] = dataclasses.replace(default, **fields)
    return out


def runner(op: str, x: dict, cfgs: dict):
    """A call that runs the forward, then the backward, of ``op``'s Triton kernels on the inputs
    ``x`` (``kernels._inputs``; SiLU / softplus on, as the mixers run them) with the launch
    configurations ``cfgs`` (see ``configs``); dout is drawn once, here."""
    mod = tune_module(op)
    fwd, bwd = cfgs["fwd"], cfgs["bwd"]
    if op == "selective_scan":
        args = tuple(x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")) + (None,)
        dout = torch.randn_like(x["u"])

        def run():
            mod.launch_forward(*args, True, False, config=fwd)
            return mod.launch_backward(*args, dout, None, True, False, config=bwd)
    else:
        args = (x["x"], x["weight"], x["bias"])
        dout = torch.randn_like(x["x"])

        def run():
            mod.launch_forward(*args, True, False, config=fwd)
            return mod.launch_backward(*args, dout, True, False, config=bwd)
    return run


def sweep(op: str, shape: str, dtype: str, device: str, knobs: dict | None = None,
          quick: bool = False, batch: int | None = None) -> list[dict]:
    w = shapes.get(shape)
    b = w.batch(device, batch)
    kernels.provider_fn("triton", op, w, b, device)  # raises Unsupported where Triton cannot run here
    x = kernels._inputs(op, w, b, kernels.DTYPES[dtype], device)
    rows = []
    for v in variants(op, knobs):
        row = dict(v, ms=math.nan, note="")
        try:
            run = runner(op, x, configs(op, v))
            run()
            row["ms"] = common.time_fn(run, device, quick) * 1e3
        except Exception as e:  # a variant that cannot run is reported, the sweep goes on
            row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
        rows.append(row)
        print(f"  {v}: {row['ms']:.3f} ms {row['note']}", file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m tools.gpu.tune_triton", description=__doc__.splitlines()[0])
    ap.add_argument("--op", default="selective_scan", choices=sorted(KNOBS))
    ap.add_argument("--shape", default="vim-ti-s16")
    ap.add_argument("--dtype", default="float32", choices=sorted(kernels.DTYPES))
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--quick", action="store_true", help="few repetitions")
    ap.add_argument("--out", help="folder for tune-<op>-<shape>.json")
    a = ap.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta = common.metadata(device)
    print(f"# {common.summary_line(meta)} | {a.op} {a.shape} {a.dtype} fwd+bwd, triton", flush=True)
    rows = sweep(a.op, a.shape, a.dtype, device, quick=a.quick, batch=a.batch)
    default = rows[0]["ms"]
    names = list(KNOBS[a.op])
    for r in sorted(rows, key=lambda r: (math.isnan(r["ms"]), r["ms"])):
        knobs = " ".join(f"{k}={r[k] if r[k] is not None else 'default'}" for k in names)
        rel = f"{default / r['ms']:.2f}x vs default" if default == default and r["ms"] == r["ms"] else ""
        print(f"{r['ms']:9.3f} ms  {knobs:45} {rel} {r['note']}")
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, f"tune-{a.op}-{a.shape}.json"), "w") as f:
            json.dump({"meta": meta, "op": a.op, "shape": a.shape, "dtype": a.dtype, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
