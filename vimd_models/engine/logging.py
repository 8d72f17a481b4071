"""Per-run outputs: summary.csv (one row per epoch; the curves are drawn by engine.plots)."""
from __future__ import annotations

import csv
import io

from ..checkpoint import atomic_write


def write_summary(history: list[dict], path: str) -> None:
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buf.getvalue().encode())

