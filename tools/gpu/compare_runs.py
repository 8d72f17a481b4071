"""Two kernel-benchmark runs side by side: what changed between them, cell by cell.

    python -m tools.gpu.compare_runs OLD.csv NEW.csv [--provider cuda] [--peers mamba_ssm,triton]

Both files are ``vimd_kernels.bench.kernels`` CSVs (e.g. benchmarks/results/nvidia-h200/kernels-gpu.csv
and a new run's bench/kernels-gpu.csv). For every (op, shape, mode, dtype) timed by
``--provider`` in both, prints its old and new median time, new/old (below 1: faster), and its
speed-up against each peer of ``--peers`` (default: the bars' peers, tools/gpu/bars.py) in each
run (the peers timed in that same run, so the ratios compare across machines and days where raw
times may not). Each run's bar verdicts follow. Cells timed in only one run are listed as such,
never silently dropped.
"""
from __future__ import annotations

import argparse
import math
import sys

from tools.gpu.bars import GPU_BARS, PEERS, bar_verdicts
from tools.gpu.runs import read_csv

KEY = ("op", "shape", "mode", "dtype")


def read_run(path: str, bars=GPU_BARS) -> tuple[dict, list[str]]:
    """{(op, shape, mode, dtype, provider): row} and the bar verdict lines of one CSV."""
    _, rows = read_csv(path)
    return ({tuple(r[k] for k in KEY) + (r["provider"],): r for r in rows},
            [v["line"] for v in bar_verdicts(rows, bars)])


def _ms(r: dict | None) -> float:
    return r["ms"] if r else math.nan


def compare(old_path: str, new_path: str, provider: str = "cuda", peers=PEERS, bars=GPU_BARS) -> str:
    old, old_v = read_run(old_path, bars)
    new, new_v = read_run(new_path, bars)
    cells = sorted({k[:-1] for k in list(old) + list(new) if k[-1] == provider})
    timed = {k[-1] for k in list(old) + list(new)}
    peers = [p for p in peers if p != provider and p in timed]
    out = [f"{provider}: old = {old_path}", f"{' ' * len(provider)}  new = {new_path}", ""]
    head = ["op", "shape", "mode", "dtype", "old ms", "new ms", "new/old"]
    table = []
    for cell in cells:
        o, n = old.get(cell + (provider,)), new.get(cell + (provider,))
        om, nm = _ms(o), _ms(n)
        row = list(cell) + [f"{om:.4g}" if o else "-", f"{nm:.4g}" if n else "-",
                            f"{nm / om:.2f}" if om > 0 and not math.isnan(om) and not math.isnan(nm) else "-"]
        for p in peers:  # speed-up of provider over peer p, in each run
            ratios = []
            for run in (old, new):
                pm, mm = _ms(run.get(cell + (p,))), _ms(run.get(cell + (provider,)))
                ratios.append(f"{pm / mm:.2f}x" if mm > 0 and not math.isnan(pm) and not math.isnan(mm) else "-")
            row.append(" -> ".join(ratios) if ratios != ["-", "-"] else "")
        table.append(row)
    head += [f"vs {p} (old -> new)" for p in peers]
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(head)]
    fmt = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    out += [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in table]
    only_old = [c for c in cells if c + (provider,) not in new]
    only_new = [c for c in cells if c + (provider,) not in old]
    if only_old:
        out.append(f"\ntimed only in the old run: {', '.join('/'.join(c) for c in only_old)}")
    if only_new:
        out.append(f"\ntimed only in the new run: {', '.join('/'.join(c) for c in only_new)}")
    out += ["", "old verdicts:"] + [f"  {v}" for v in old_v] + ["new verdicts:"] + [f"  {v}" for v in new_v]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.gpu.compare_runs", description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--provider", default="cuda", help="the implementation compared (default: cuda)")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help="comma-separated peers to show speed-ups against (default: %(default)s)")
    a = ap.parse_args(argv)
    for path in (a.old, a.new):
        try:
            open(path).close()
        except OSError as e:
            ap.error(f"cannot read {path}: {e.strerror}")
    print(compare(a.old, a.new, a.provider, [p for p in a.peers.split(",") if p]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
