"""The cuda scan's launch planner against measurements: ``python -m tools.gpu.scan_plan``.

The cuda backend picks, per call, how many chunks the forward splits L into
(``plan_chunk_len``, from the cost model ``fwd_cost``) and whether the backward walks each row's
whole L in one block or cuts it into chunks run in parallel after a summary pass (``use_row_walk``). Both rest on
estimates made without a GPU. This times, per shape, the forward at the planned split and at
forced alternatives (one chunk; a quarter, half, twice and four times the planned count) and the
fwd+bwd with the row walk forced on and off, and prints the times next to the cost model's
estimate, so one GPU run shows whether the planner picks the fastest variant.

Results: a table on stdout and ``scan_plan.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os

import torch

from vimd_kernels.bench import common, kernels, shapes

DEFAULT_SHAPES = ["vim-ti-s16", "vim-ti-s8", "vim-s-s8", "dvmsr-64", "dvmsr-256"]


def chunk_candidates(L: int, planned: int, steps: int) -> list[int]:
    """Chunk lengths (multiples of ``steps``) to time: the planned one, one chunk, and the planned
    number of chunks divided or multiplied by 2 and 4 (distinct lengths, longest first)."""
    n0 = math.ceil(L / planned)
    out = set()
    for n in (1, n0 // 4, n0 // 2, n0, 2 * n0, 4 * n0):
        if n >= 1:
            out.add(max(steps, math.ceil(math.ceil(L / n) / steps) * steps))
    out.add(planned)
    return sorted(out, reverse=True)


@contextlib.contextmanager
def patched(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def plan_rows(shape: str, dtype: str, quick: bool = False) -> list[dict]:
    from vimd_kernels.selective_scan import cuda as scan_cuda
    w = shapes.get(shape)
    b = w.batch("cuda")
    x = kernels.scan_inputs(w, b, kernels.DTYPES[dtype], "cuda")
    fn = kernels.provider_fn("cuda", "selective_scan", w, b, "cuda")
    sms = scan_cuda._device_sms(x["u"])
    planned = scan_cuda.plan_chunk_len(b, w.d_inner, w.L, sms)
    col_blocks = b * math.ceil(w.d_inner / scan_cuda.FWD_ROWS)
    tiles = math.ceil(w.L / scan_cuda.FWD_STEPS)
    base = dict(shape=shape, batch=b, dtype=dtype)
    rows = []
    fwd = kernels.make_runner(fn, x, "fwd")
    for chunk in chunk_candidates(w.L, planned, scan_cuda.FWD_STEPS):
        with patched(scan_cuda, "plan_chunk_len", lambda *a, c=chunk: c):
            ms = common.time_fn(fwd, "cuda", quick) * 1e3
        rows.append(dict(base, pass_="fwd", variant=f"{math.ceil(w.L / chunk)} chunks of {chunk}",
                         planned=chunk == planned, ms=ms,
                         estimate=scan_cuda.fwd_cost(col_blocks, tiles, chunk // scan_cuda.FWD_STEPS, sms)))
    walk_planned = scan_cuda.use_row_walk(b, w.d_inner, w.L, sms)
    both = kernels.make_runner(fn, x, "fwd+bwd")
    if w.L > scan_cuda.SEGMENT:  # the choice exists only with several backward segments
        for walk in (True, False):
            with patched(scan_cuda, "use_row_walk", lambda *a, v=walk: v):
                ms = common.time_fn(both, "cuda", quick) * 1e3
            rows.append(dict(base, pass_="fwd+bwd", variant="row walk" if walk else "summary + parallel chunks",
                             planned=walk == walk_planned, ms=ms, estimate=math.nan))
    best = {p: min(r["ms"] for r in rows if r["pass_"] == p) for p in {r["pass_"] for r in rows}}
    for r in rows:
        r["vs_best"] = r["ms"] / best[r["pass_"]]
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m tools.gpu.scan_plan", description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES)
    ap.add_argument("--dtypes", nargs="+", default=["float32"], choices=list(kernels.DTYPES))
    ap.add_argument("--quick", action="store_true", help="shorter timing loops")
    ap.add_argument("--out", help="folder for scan_plan.json (default: no file)")
    a = ap.parse_args(argv)
    for s in a.shapes:
        try:
            shapes.get(s)
        except ValueError as e:
            raise SystemExit(f"--shapes: {e}") from None
    if not torch.cuda.is_available():
        raise SystemExit("tools.gpu.scan_plan times the cuda backend: it needs a CUDA device")
    meta = common.metadata("cuda")
    print(f"# {common.summary_line(meta)}", flush=True)
    rows = []
    for shape in a.shapes:
        for dtype in a.dtypes:
            got = plan_rows(shape, dtype, a.quick)
            rows += got
            print(common.format_table(got, [("shape", "shape"), ("dtype", "dtype"), ("pass_", "pass"),
                                            ("variant", "variant"), ("planned", "planned"),
                                            ("estimate", "estimate"), ("ms", "ms"), ("vs_best", "x best")]),
                  flush=True)
    misses = [r for r in rows if r["planned"] and r["vs_best"] > 1.05]
    print(f"planner picked the fastest variant (within 5%) in {sum(r['planned'] for r in rows) - len(misses)} "
          f"of {sum(r['planned'] for r in rows)} cases" + "".join(
              f"\n  miss: {r['shape']} {r['dtype']} {r['pass_']}: {r['variant']} is {r['vs_best']:.2f}x the best"
              for r in misses))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "scan_plan.json"), "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
