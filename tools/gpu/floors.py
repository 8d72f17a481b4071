"""Floors: the least time any exact implementation can take, from the two ceilings of the device.

    python -m tools.gpu.floors [RUN.csv] [--sm-clock-mhz F] [--all]

A floor is the larger of two times:

- bytes: what the minimal algorithm moves (``vimd_kernels.bench.kernels.min_bytes``: each input read once, each
  output written once) over the device-to-device copy bandwidth measured in the run;
- exp2: the decays exp(delta * A) every exact selective scan evaluates, one per (row, step,
  state) in the forward and again in the backward (storing them would move (batch, dim, L, N)
  floats), over the special-function units' rate: 16 ex2 per clock per SM on sm_80 to sm_90
  (the CUDA C++ Programming Guide's arithmetic-throughput table) at the SM's highest clock.

Measured time over the floor is the gap a kernel can still close; ``bound`` says which ceiling
sets the floor.  Two consequences for the bar on forward bandwidth (70% of copy): where the
exp2 floor is above bytes / 0.7, no exact kernel reaches it; and a forward that splits L across
blocks evaluates every exp2 twice (chunk summaries, then the chunks from their entry states), so
its own floor is twice the exp2 term.  Both are printed per cell: ``max % copy`` (one exp2 per
step and state) and ``split`` (two).

The default RUN is the committed H200 run.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

from vimd_kernels.bench import shapes
from vimd_kernels.bench.common import format_table
from vimd_kernels.bench.kernels import DTYPES, min_bytes
from tools.gpu.runs import H200_RUN, read_csv

EX2_PER_CLOCK_PER_SM = 16
# Highest SM clock (MHz) by device name, for runs that did not record one (nvidia-smi's
# clocks.max.sm where a run can ask; these are the published boost clocks).
MAX_SM_CLOCK_MHZ = {"H200": 1980, "H100 80GB HBM3": 1980, "H100 SXM": 1980, "H100 NVL": 1785,
                    "H100 PCIe": 1755, "A100": 1410}


@dataclass(frozen=True)
class Rates:
    """The two ceilings of one device: copy bandwidth (bytes/s) and ex2 evaluations per second."""
    copy_bw: float
    sms: int
    sm_clock_hz: float

    @property
    def ex2_per_s(self) -> float:
        return self.sms * EX2_PER_CLOCK_PER_SM * self.sm_clock_hz


def published_sm_clock_mhz(device_name: str) -> float | None:
    """The published highest SM clock of a device named like ``device_name`` (longest match)."""
    hits = [k for k in MAX_SM_CLOCK_MHZ if k.lower() in device_name.lower()]
    return float(MAX_SM_CLOCK_MHZ[max(hits, key=len)]) if hits else None


def exp2_count(op: str, w: shapes.Workload, batch: int, mode: str) -> int:
    """exp2 evaluations of the minimal exact algorithm: one per (row, step, state) and scan
    direction in the forward, as many again in the backward; none in the conv."""
    if op == "causal_conv1d":
        return 0
    per_pass = batch * w.d_inner * w.L * w.N * (2 if op == "bimamba_inner" else 1)
    return per_pass * (1 if mode == "fwd" else 2)


def floor(op: str, w: shapes.Workload, batch: int, dtype: str, mode: str, rates: Rates) -> dict:
    """{'bytes_s', 'exp2_s', 'floor_s', 'bound'} for one cell."""
    bytes_s = min_bytes(op, w, batch, DTYPES[dtype], mode) / rates.copy_bw
    exp2_s = exp2_count(op, w, batch, mode) / rates.ex2_per_s
    return dict(bytes_s=bytes_s, exp2_s=exp2_s, floor_s=max(bytes_s, exp2_s),
                bound="exp2" if exp2_s > bytes_s else "bytes")


def rates_of(meta: dict, sm_clock_mhz: float | None = None) -> Rates:
    """The run's ceilings from its metadata (a CSV's strings or a live run's values): its measured
    copy bandwidth, SM count and SM clock (given, recorded, or the device's published boost clock).
    ValueError naming what is missing."""
    try:
        copy_bw = float(meta["copy_gbps"]) * 1e9
        sms = int(meta["sm_count"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("the run records no copy bandwidth or SM count (a GPU run of vimd_kernels.bench.kernels "
                         "does)") from None
    mhz = sm_clock_mhz or (float(meta["sm_clock_mhz"]) if meta.get("sm_clock_mhz") not in (None, "", "None")
                           else None) or published_sm_clock_mhz(meta.get("device", ""))
    if not mhz:
        raise ValueError(f"no SM clock known for {meta.get('device')!r}: pass --sm-clock-mhz")
    return Rates(copy_bw, sms, mhz * 1e6)


def table(meta: dict, rows: list[dict], rates: Rates, providers=("cuda",)) -> list[dict]:
    """One line per timed row of ``providers``: measured time against the floors."""
    out = []
    for r in rows:
        if r["provider"] not in providers or r["shape"] not in shapes.WORKLOADS:
            continue
        ms = r["ms"]
        if math.isnan(ms):
            continue
        w = shapes.get(r["shape"])
        f = floor(r["op"], w, r["batch"], r["dtype"], r["mode"], rates)
        line = dict(op=r["op"], shape=r["shape"], dtype=r["dtype"], mode=r["mode"], provider=r["provider"],
                    ms=ms, bytes_us=f["bytes_s"] * 1e6, exp2_us=f["exp2_s"] * 1e6,
                    floor_us=f["floor_s"] * 1e6, bound=f["bound"], gap=ms * 1e3 / (f["floor_s"] * 1e6))
        if r["mode"] == "fwd" and f["exp2_s"] > 0:
            line["max_pct_copy"] = 100 * f["bytes_s"] / f["floor_s"]
            line["split_pct_copy"] = 100 * f["bytes_s"] / max(f["bytes_s"], 2 * f["exp2_s"])
        out.append(line)
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m tools.gpu.floors", description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", default=H200_RUN, help="a vimd_kernels.bench.kernels CSV from a GPU run")
    p.add_argument("--sm-clock-mhz", type=float, help="SM clock to assume (default: recorded or published)")
    p.add_argument("--all", action="store_true", help="every provider, not only cuda")
    a = p.parse_args(argv)
    if not os.path.exists(a.run):
        raise SystemExit(f"run: no file {a.run!r}")
    meta, rows = read_csv(a.run)
    try:
        rates = rates_of(meta, a.sm_clock_mhz)
    except ValueError as e:
        raise SystemExit(f"{a.run}: {e}") from None
    providers = sorted({r["provider"] for r in rows}) if a.all else ("cuda",)
    lines = table(meta, rows, rates, providers)
    print(f"# {meta.get('summary', a.run)}")
    print(f"# ceilings: copy {rates.copy_bw / 1e9:.0f} GB/s (measured in the run); ex2 {rates.sms} SMs x "
          f"{EX2_PER_CLOCK_PER_SM}/clock x {rates.sm_clock_hz / 1e6:.0f} MHz = {rates.ex2_per_s / 1e12:.2f} T/s")
    cols = [("op", "op"), ("shape", "shape"), ("dtype", "dtype"), ("mode", "mode"), ("provider", "provider"),
            ("ms", "ms"), ("bytes_us", "bytes us"), ("exp2_us", "exp2 us"), ("floor_us", "floor us"),
            ("bound", "bound"), ("gap", "time/floor"), ("max_pct_copy", "max % copy"),
            ("split_pct_copy", "split: max % copy")]
    print(format_table(lines, cols))
    return lines


if __name__ == "__main__":
    main()
