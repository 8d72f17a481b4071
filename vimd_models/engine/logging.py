"""Per-run outputs: summary.csv (one row per epoch) and PNG training curves."""
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


def write_curves(history: list[dict], path: str, title: str = "") -> None:
    """Left: training loss components; right: validation metrics, against epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for k in sorted({k for r in history for k in r if k.startswith("train_") and k != "train_time_s"}):
        a.plot(epochs, [r.get(k, float("nan")) for r in history], marker="o", label=k[6:])
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.set_title("training"), a.legend(fontsize=8)
    for k in sorted({k for r in history for k in r if k.startswith("val_")}):
        xs = [r["epoch"] for r in history if k in r]
        b.plot(xs, [r[k] for r in history if k in r], marker="o", label=k[4:])
    b.set_xlabel("epoch"), b.set_title("validation"), b.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
