"""The GPU kernels' performance bars, judged from one ``vimd_kernels.bench.kernels --preset gpu`` run.

    python -m tools.gpu.bars [RUN.csv]        # default: the committed H200 run

A bar holds when ``ours`` reaches ``threshold`` in every cell (shape x dtype x mode):

- metric "speedup": time of ``peer`` / time of ``ours``, both timed in the same run;
- metric "pct_copy": our achieved bandwidth (bytes of the minimal algorithm / time) as a fraction
  of the device-to-device copy measured in the run; ``peer`` is timed beside it for context only.

One verdict per bar: PASS when every cell is measured and reaches the threshold, FAIL when a
measured cell falls short (named), NOT MEASURED otherwise (what is missing and why).
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
from dataclasses import dataclass

from vimd_kernels.bench.kernels import VIM_SHAPES
from tools.gpu.runs import H200_RUN, read_csv


@dataclass(frozen=True)
class Bar:
    name: str
    op: str
    shapes: tuple
    modes: tuple
    dtypes: tuple
    peer: str
    threshold: float
    metric: str = "speedup"
    ours: str = "cuda"


# (a)-(e): the CUDA kernels; t1-t3: the Triton kernels (t3, the conv forward within 1.1x of a copy of
# its input and output, is at least 1/1.1 of the copy's bandwidth).  Where a bar names no dtype it is
# measured in float32.
GPU_BARS = (
    Bar("a", "selective_scan", VIM_SHAPES, ("fwd+bwd",), ("float32", "bfloat16"), "mamba_ssm", 1.5),
    Bar("b", "bimamba_inner", VIM_SHAPES, ("fwd+bwd",), ("float32",), "mamba_ssm_composed", 2.0),
    Bar("c", "selective_scan", ("dvmsr-256",), ("fwd+bwd",), ("float32",), "mamba_ssm", 3.0),
    Bar("d", "selective_scan", VIM_SHAPES + ("dvmsr-256",), ("fwd",), ("float32",), "mamba_ssm", 0.70,
        metric="pct_copy"),
    Bar("e", "causal_conv1d", VIM_SHAPES, ("fwd", "fwd+bwd"), ("float32",), "causal_conv1d", 1.0),
    Bar("t1", "selective_scan", ("vim-ti-s16",), ("fwd+bwd",), ("float32", "bfloat16"), "mamba_ssm", 1.2,
        ours="triton"),
    Bar("t2", "bimamba_inner", VIM_SHAPES, ("fwd+bwd",), ("float32",), "mamba_ssm_composed", 1.5,
        ours="triton"),
    Bar("t3", "causal_conv1d", VIM_SHAPES, ("fwd",), ("float32",), "causal_conv1d", 1 / 1.1,
        metric="pct_copy", ours="triton"),
)
PEERS = tuple(dict.fromkeys(b.peer for b in GPU_BARS))


def _why_not_timed(row: dict | None, provider: str) -> str | None:
    if row is None:
        return f"{provider} not run"
    if math.isnan(row["ms"]):
        return f"{provider}: {row['note'] or 'not timed'}"
    return None


def _bar_value(bar: Bar, ours: dict | None, peer: dict | None) -> tuple[float | None, str | None]:
    """(value, None) for one cell of ``bar``, or (None, why it is not measured)."""
    why = _why_not_timed(ours, bar.ours)
    if bar.metric == "speedup":
        why = why or _why_not_timed(peer, bar.peer)
        return (None, why) if why else (peer["ms"] / ours["ms"], None)
    if why:
        return None, why
    pct = ours.get("pct_copy", math.nan)
    return (None, "no copy bandwidth measured (GPU only)") if math.isnan(pct) else (pct / 100, None)


def bar_verdicts(rows: list[dict], bars=GPU_BARS) -> list[dict]:
    """One verdict per bar from the rows of one run (``ms`` and ``pct_copy`` as floats)."""
    index = {(r["op"], r["shape"], r["dtype"], r["mode"], r["provider"]): r for r in rows}
    verdicts = []
    for bar in bars:
        values, missing = {}, {}
        for shape, dtype, mode in itertools.product(bar.shapes, bar.dtypes, bar.modes):
            cell = "/".join([shape, dtype] + ([mode] if len(bar.modes) > 1 else []))
            value, why = _bar_value(bar, index.get((bar.op, shape, dtype, mode, bar.ours)),
                                    index.get((bar.op, shape, dtype, mode, bar.peer)))
            if why:
                missing[cell] = why
            else:
                values[cell] = value
        verdicts.append(_verdict(bar, values, missing))
    return verdicts


def _verdict(bar: Bar, values: dict, missing: dict) -> dict:
    fmt = (lambda v: f"{v:.2f}x") if bar.metric == "speedup" else (lambda v: f"{100 * v:.0f}%")  # noqa: E731
    short = [c for c, v in values.items() if v < bar.threshold]
    status = "FAIL" if short else "NOT MEASURED" if missing else "PASS"
    target = (f"{bar.ours} vs {bar.peer} >= {fmt(bar.threshold)}" if bar.metric == "speedup"
              else f"{bar.ours} bandwidth >= {fmt(bar.threshold)} of d2d copy")
    parts = [f"({bar.name}) {status}: {bar.op} {', '.join(bar.modes)} {target}"]
    if values:
        parts.append(f"min {fmt(min(values.values()))} [" + ", ".join(f"{c} {fmt(v)}" for c, v in values.items())
                     + "]")
    if short:
        parts.append("below the bar: " + ", ".join(short))
    if missing:
        by_reason: dict = {}
        for cell, why in missing.items():
            by_reason.setdefault(why, []).append(cell)
        parts.append(f"not measured ({len(missing)} of {len(missing) + len(values)} cells): " + "; ".join(
            f"{why} [{', '.join(cells)}]" for why, cells in by_reason.items()))
    return dict(bar=bar.name, status=status, op=bar.op, modes=list(bar.modes), dtypes=list(bar.dtypes),
                shapes=list(bar.shapes), ours=bar.ours, peer=bar.peer, metric=bar.metric,
                threshold=bar.threshold, min=min(values.values()) if values else None, values=values,
                missing=missing, line=" | ".join(parts))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m tools.gpu.bars", description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", default=H200_RUN, help="a vimd_kernels.bench.kernels CSV (--preset gpu)")
    a = p.parse_args(argv)
    if not os.path.exists(a.run):
        raise SystemExit(f"run: no file {a.run!r}")
    meta, rows = read_csv(a.run)
    verdicts = bar_verdicts(rows)
    print(f"# GPU perf bars: medians, each peer timed in the same run | {meta.get('summary', a.run)}")
    for v in verdicts:
        print("#   " + v["line"])
    return verdicts


if __name__ == "__main__":
    main()
