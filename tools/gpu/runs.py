"""A ``vimd_kernels.bench.kernels`` run read back from its CSV: the metadata and the rows, numbers parsed."""
from __future__ import annotations

import csv
import math
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The committed H200 run of ``python -m vimd_kernels.bench.kernels --preset gpu``.
H200_RUN = os.path.join(ROOT, "benchmarks", "results", "nvidia-h200", "kernels-gpu.csv")
FLOATS = ("ms", "peak_mb", "gbps", "pct_copy")


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_csv(path: str) -> tuple[dict, list[dict]]:
    """(meta, rows) of a ``vimd_kernels.bench.kernels`` CSV: meta from its leading ``# key: value`` lines
    (as strings; earlier runs' ``# verdict:`` lines are skipped), rows with ``FLOATS`` as floats
    (NaN where not timed) and ``batch`` as an int."""
    meta, lines = {}, []
    with open(path, newline="") as f:
        for line in f:
            if line.startswith("# ") and ": " in line and not line.startswith("# verdict:"):
                k, v = line[2:].rstrip("\n").split(": ", 1)
                meta[k] = v
            elif not line.startswith("#"):
                lines.append(line)
    rows = list(csv.DictReader(lines))
    for r in rows:
        r.update({k: _float(r[k]) for k in FLOATS if k in r})
        if r.get("batch"):
            r["batch"] = int(r["batch"])
    return meta, rows
