"""PNG figures: a run's training curves, the demo's results, and image grids.

Each figure has a builder that returns the matplotlib Figure (so its axes can be inspected) and a
writer that saves it. One quantity per axis: every training-loss component and every validation
metric gets its own panel, with its unit in the axis label.
"""
from __future__ import annotations

import io
import math

from ..checkpoint import atomic_write

# validation metric -> (panel title, unit, fixed y range or None); a metric not listed gets its name
METRICS = {
    "top1": ("top-1 accuracy", "%", (0, 100)),
    "top5": ("top-5 accuracy", "%", (0, 100)),
    "psnr": ("PSNR on Y", "dB", None),
    "ssim": ("SSIM on Y", "0-1", None),
}
# loss-component name prefix -> the training phase it belongs to (DFKD: "g_" = generator steps)
PHASES = {"g_": "generator"}
SATURATED_TOP5 = 99.0  # a top-5 curve averaging at least this (%) says nothing: not drawn


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str, dpi: int = 90) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _pyplot().close(fig)
    atomic_write(path, buf.getvalue())


def _grid(n: int, ncols: int, panel: tuple[float, float]):
    plt = _pyplot()
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _metric_panels(history: list[dict]) -> dict[str, list[str]]:
    """metric name -> the history keys drawn in its panel (``val_<metric>`` and, with several
    evaluation sets, ``val_<set>/<metric>``)."""
    panels: dict[str, list[str]] = {}
    for k in (k for r in history for k in r):
        if k.startswith("val_"):
            metric = k[4:].rsplit("/", 1)[-1]
            keys = panels.setdefault(metric, [])
            if k not in keys:
                keys.append(k)
    top5 = [r[k] for r in history for k in panels.get("top5", []) if k in r]
    if top5 and sum(top5) / len(top5) >= SATURATED_TOP5:
        del panels["top5"]
    return panels


def curves_figure(history: list[dict], title: str = ""):
    """One panel per training-loss component (``train_<name>``), then one per validation metric,
    against epoch (integer ticks when every row ends a whole epoch)."""
    from matplotlib.ticker import MaxNLocator
    losses = sorted({k for r in history for k in r if k.startswith("train_") and k != "train_time_s"},
                    key=lambda k: (k != "train_loss", k))
    metrics = _metric_panels(history)
    dropped = "top5" not in metrics and any("top5" in k for r in history for k in r)
    fig, axes = _grid(len(losses) + len(metrics), 4, (3.2, 2.6))
    integer = all(float(r["epoch"]).is_integer() for r in history)
    for ax, k in zip(axes, losses):
        xs = [r["epoch"] for r in history if k in r]
        ax.plot(xs, [r[k] for r in history if k in r], marker="o", color="tab:blue")
        name = k[6:]
        phase = next((p for prefix, p in PHASES.items() if name.startswith(prefix)), None)
        ax.set_title("training loss" if k == "train_loss" else
                     f"{phase}: {name.split('_', 1)[1]}" if phase else f"training: {name}", fontsize=9)
        ax.set_ylabel("loss (epoch mean)", fontsize=8)
    for ax, (metric, keys) in zip(axes[len(losses):], metrics.items()):
        name, unit, span = METRICS.get(metric, (metric, "", None))
        for k in keys:
            xs = [r["epoch"] for r in history if k in r]
            label = k[4:].rsplit("/", 1)[0] if "/" in k else None
            ax.plot(xs, [r[k] for r in history if k in r], marker="o", color="tab:orange" if label is None else None,
                    label=label)
        if len(keys) > 1:
            ax.legend(fontsize=7)
        ax.set_title(f"validation: {name}", fontsize=9)
        ax.set_ylabel(f"{name} ({unit})" if unit else name, fontsize=8)
        if span:
            ax.set_ylim(*span)
    for ax in axes:
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if integer:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if dropped:
        fig.text(0.99, 0.005, f"top-5 accuracy {SATURATED_TOP5:g}-100% (mean over the evaluations): not drawn",
                 ha="right", va="bottom", fontsize=7, color="grey")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_curves(history: list[dict], path: str, title: str = "") -> None:
    _save(curves_figure(history, title), path, dpi=80)


# colour of a run in the classification panel, by task (teachers: plain classification)
TASK_COLOURS = {"classify": "tab:gray", "vimd": "tab:blue", "dfkd": "tab:purple"}


def _hbar(ax, labels: list[str], values: list[float], fmt: str, color) -> None:
    rects = ax.barh(labels, values, color=color)
    ax.bar_label(rects, labels=[format(v, fmt) for v in values], padding=3, fontsize=8)
    ax.invert_yaxis()  # first run on top, as in the table
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", alpha=0.3)


def results_figure(rows: list[dict], title: str, chance: float | None = None,
                   baseline: str | None = None):
    """The demo's results: top-1 (%) of the classification runs (from 0, with the chance level;
    bar colour by task: TASK_COLOURS),
    PSNR (dB, from 0), the PSNR difference to ``baseline`` (dB, labelled) and SSIM of the SR runs."""
    cls = [r for r in rows if r.get("top1") is not None]
    sr = [r for r in rows if r.get("psnr") is not None]
    base = next((r for r in sr if r["run"] == baseline), None)
    panels = [p for p, keep in (("top1", cls), ("psnr", sr), ("dpsnr", base), ("ssim", sr)) if keep]
    fig, axes = _grid(len(panels), 2, (6.2, 0.45 * max(len(cls), len(sr), 3) + 1.4))
    for ax, panel in zip(axes, panels):
        if panel == "top1":
            _hbar(ax, [r["run"] for r in cls], [r["top1"] for r in cls], ".1f",
                  [TASK_COLOURS.get(r.get("task"), "tab:blue") for r in cls])
            ax.set_xlim(0, 110)
            ax.set_xlabel("top-1 accuracy on the validation split (%)", fontsize=8)
            ax.set_title("classification", fontsize=10)
            if chance is not None:
                ax.axvline(chance, color="grey", ls="--", lw=1)
                ax.text(chance, ax.get_ylim()[1], f" chance {chance:g}%", color="grey", fontsize=7, va="bottom")
        elif panel == "psnr":
            _hbar(ax, [r["run"] for r in sr], [r["psnr"] for r in sr], ".2f", "tab:orange")
            ax.set_xlim(0, max(r["psnr"] for r in sr) * 1.2)
            ax.set_xlabel("PSNR on Y (dB, axis from 0)", fontsize=8)
            ax.set_title("super-resolution x4: PSNR", fontsize=10)
        elif panel == "dpsnr":
            d = [r["psnr"] - base["psnr"] for r in sr]
            _hbar(ax, [r["run"] for r in sr], d, "+.2f", "tab:red")
            span = max(0.1, max(abs(v) for v in d)) * 1.5
            ax.set_xlim(-span, span)
            ax.axvline(0, color="black", lw=0.8)
            ax.set_xlabel(f"PSNR minus {baseline} (dB)", fontsize=8)
            ax.set_title("super-resolution x4: PSNR difference", fontsize=10)
        else:
            _hbar(ax, [r["run"] for r in sr], [r["ssim"] for r in sr], ".3f", "tab:green")
            ax.set_xlim(0, 1.1)
            ax.set_xlabel("SSIM on Y (0-1)", fontsize=8)
            ax.set_title("super-resolution x4: SSIM", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_results_plot(rows: list[dict], path: str, title: str, chance: float | None = None,
                       baseline: str | None = None) -> None:
    _save(results_figure(rows, title, chance, baseline), path)


def image_grid_figure(images, title: str = "", captions: list[str] | None = None, ncols: int = 8):
    """A grid of images (N, 3, H, W) in [0, 1], each with an optional caption."""
    n = images.shape[0]
    fig, axes = _grid(n, ncols, (1.1, 1.25))
    for i, ax in enumerate(axes):
        ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        if captions:
            ax.set_title(captions[i], fontsize=7, pad=2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def write_image_grid(images, path: str, title: str = "", captions: list[str] | None = None,
                     ncols: int = 8) -> None:
    _save(image_grid_figure(images, title, captions, ncols), path)
