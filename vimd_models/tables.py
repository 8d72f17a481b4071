"""The seed papers' result tables, filled from finished runs: ``vimd table NAME``.

Each table cell names a packaged config (plus ``key=value`` overrides for the ablations and sweeps,
which also give the run its own ``name``), the metric read from that run's ``summary.csv`` and the
paper's number. A metric is read from the run's best row (the row with the highest value of the
column ``best.safetensors`` follows: ``val_top1`` or ``val_psnr``, the first SR test set), so
classification cells show the best top-1 and SR cells the PSNR / SSIM of each named test set
evaluated at that row. ``render_markdown`` shows each cell as ``ours (paper, ours - paper)``; a cell whose
run is missing shows ``-`` and the ``vimd train`` command that makes it is listed under the table.
"""
from __future__ import annotations

import csv
import io
import os
import shlex
from dataclasses import dataclass, field

from .errors import UserError


@dataclass(frozen=True)
class Metric:
    column: str        # summary.csv column
    select: str        # the column whose highest value picks the row read
    digits: int = 2


TOP1 = Metric("val_top1", "val_top1")


def psnr(test_set: str) -> Metric:
    return Metric(f"val_{test_set}/psnr", "val_psnr", 2)


def ssim(test_set: str) -> Metric:
    return Metric(f"val_{test_set}/ssim", "val_psnr", 4)


@dataclass(frozen=True)
class Cell:
    config: str                      # a packaged config's name (or a YAML path)
    metric: Metric = TOP1
    overrides: tuple[str, ...] = ()  # key.sub=value, as on the command line
    paper: float | None = None       # the paper's number (None: not published)


@dataclass(frozen=True)
class Table:
    name: str
    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[Cell | None, ...]], ...]  # (row label, one cell or None per column)
    notes: tuple[str, ...] = field(default=())


# ---- ViMD (seed 000) --------------------------------------------------------------------------
VIMD_DATASETS = {"cub": "CUB-200-2011", "cars": "Stanford Cars", "dogs": "Stanford Dogs",
                 "aircraft": "FGVC-Aircraft", "pets": "Oxford-IIIT Pets", "flowers": "Oxford Flowers-102",
                 "indoor67": "MIT Indoor-67", "stanford40": "Stanford-40 Actions"}
# Authors' logs, best top-1. CUB: every stage. Dogs, Cars, Aircraft, Pets: one number each with no
# stage named, read as the HR teacher's (DFKD-FGVC's HR ResNet-34 reaches 70.15 on Aircraft, so
# 83.17 from 56x56 LR input is unlikely).
VIMD_PAPER = {  # dataset: (HR teacher, CE only, + L_LD, + L_HSD + L_LD)
    "cub": (84.47, 77.98, 79.96, 80.08), "dogs": (84.18, None, None, None), "cars": (88.87, None, None, None),
    "aircraft": (83.17, None, None, None), "pets": (92.12, None, None, None),
}
VIMD_BETAS = (1, 10, 20, 30)
VIMD_BETA_DATASETS = ("cub", "cars", "dogs", "aircraft")


def _vimd_beta(ds: str, beta: int, paper: float | None = None) -> Cell:
    """The ViMD student with HSD weight ``beta`` (20: the packaged preset's own run)."""
    if beta == 20:
        return Cell(f"vimd_{ds}", paper=paper)
    return Cell(f"vimd_{ds}", overrides=(f"distill.beta={beta}", f"name=vimd_{ds}_beta{beta}"), paper=paper)


def _vimd_row(ds: str) -> tuple[Cell, ...]:
    teacher, ce, ld, full = VIMD_PAPER.get(ds, (None,) * 4)
    return (Cell(f"hrvm_{ds}", paper=teacher), Cell(f"srvm_{ds}_ce", paper=ce),
            Cell(f"vimd_{ds}", overrides=("distill.beta=0", f"name=vimd_{ds}_ld"), paper=ld),
            _vimd_beta(ds, 20, full))


VIMD = Table(
    "vimd", "ViMD: top-1 (%) of the HR teacher and the LR 56x56 SRVM-Net student, CE only, + logit "
    "distillation (beta 0) and + hidden-state distillation (beta 20, all 24 layers)",
    ("HRVM-Net (HR teacher)", "SRVM-Net CE", "+ L_LD", "+ L_HSD + L_LD (ViMD)"),
    tuple((label, _vimd_row(ds)) for ds, label in VIMD_DATASETS.items()),
    ("Order: hrvm_<ds> and srresnet_div2k, then srvm_<ds>_ce (stage 1), then the distillation runs "
     "(stage 2 starts from stage 1's best.safetensors).",
     "Paper: the authors' logs; on Dogs, Cars, Aircraft and Pets their one number is read as the teacher's."))

VIMD_BETA = Table(
    "vimd_beta", "ViMD: top-1 (%) of the student against the hidden-state weight beta "
    "(alpha 1, T 4, all 24 layers; the paper sweeps {1, 10, 20, 30} and keeps 20)",
    tuple(VIMD_DATASETS[ds] for ds in VIMD_BETA_DATASETS),
    tuple((f"beta = {b}", tuple(_vimd_beta(ds, b, VIMD_PAPER.get(ds, (None,) * 4)[3] if b == 20 else None)
                                for ds in VIMD_BETA_DATASETS)) for b in VIMD_BETAS),
    ("Each run starts from stage 1 (srvm_<ds>_ce) and needs the HR teacher (hrvm_<ds>).",))

# ---- DVMSR (seed 001) -------------------------------------------------------------------------
SR_SETS = {"Set5": "Set5", "Set14": "Set14", "B100": "B100", "Urban100": "Urban100", "Manga109": "Manga109",
           "DIV2K_LSDIR_valid": "NTIRE 2024 valid"}
SR_TEST_SETS = "data.test_sets=[" + ", ".join(f"data/SR/{s}" for s in SR_SETS) + "]"
DVMSR_MODELS = {  # config: (row label, {(test set, metric): paper})
    "dvmsr_div2k": ("DVMSR x4, no teacher", {}),
    "dvmsr_teacher_div2k": ("teacher (180 ch, 6 RSSBs x 6 ViMMs)", {}),
    "dvmsr_kd_div2k": ("DVMSR x4, distilled", {("DIV2K_LSDIR_valid", "psnr"): 26.93}),
}
SR_METRICS = {"psnr": ("PSNR (dB)", psnr), "ssim": ("SSIM", ssim)}

DVMSR = Table(
    "dvmsr", "DVMSR x4: PSNR / SSIM on the Y channel (border 4) of each test set, with and without the teacher",
    tuple(SR_SETS.values()),
    tuple((f"{label} {mlabel}", tuple(Cell(cfg, make(s), (SR_TEST_SETS,), paper.get((s, m))) for s in SR_SETS))
          for cfg, (label, paper) in DVMSR_MODELS.items() for m, (mlabel, make) in SR_METRICS.items()),
    ("Test sets under data/SR/ (Set5/HR + Set5/LR_bicubic/X4, ...); the NTIRE 2024 validation set "
     "(DIV2K_LSDIR valid) as data/SR/DIV2K_LSDIR_valid (HR/ + LR_bicubic/X4/, or its HR images alone).",
     "Order: dvmsr_teacher_div2k before dvmsr_kd_div2k (the student distils from its model.safetensors).",
     "Paper: the NTIRE 2024 challenge log of the distilled model."))

# ---- DFKD-FGVC (seed 002) ---------------------------------------------------------------------
DFKD_PAPER = {  # dataset: (ResNet-34 teacher, ablation baseline, DFKD-FGVC)
    "aircraft": ("FGVC-Aircraft", (70.15, 60.30, 65.76)),
    "cars": ("Stanford Cars", (84.22, 64.80, 71.89)),
    "cub": ("CUB-200-2011", (76.87, 51.34, 56.93)),
}
# the ablation baseline: a generator without spatial attention, student loss L_KD alone
DFKD_BASELINE = ("distill.dfkd.sam_lambda=0", "distill.dfkd.w_mhad=0", "distill.dfkd.w_sfcl=0")

DFKD = Table(
    "dfkd", "DFKD-FGVC: top-1 (%) of the ResNet-34 teacher (real images) and the data-free ResNet-18 students",
    ("ResNet-34 teacher", "baseline (no SAM, L_KD only)", "DFKD-FGVC"),
    tuple((label, (Cell(f"resnet34_{ds}", paper=t),
                   Cell(f"dfkd_{ds}", overrides=(*DFKD_BASELINE, f"name=dfkd_{ds}_baseline"), paper=b),
                   Cell(f"dfkd_{ds}", paper=d)))
          for ds, (label, (t, b, d)) in DFKD_PAPER.items()),
    ("Order: resnet34_<ds> first (the students distil from its best.safetensors).",))

TABLES = {t.name: t for t in (VIMD, VIMD_BETA, DVMSR, DFKD)}


# ---- gathering --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    cell: Cell
    run_dir: str
    command: str        # the vimd train command that makes (or finishes) the run
    value: float | None
    finished: bool      # model.safetensors written (the run's last step)


def get_table(name: str) -> Table:
    if name not in TABLES:
        raise UserError(f"unknown table '{name}'; tables: {', '.join(TABLES)}")
    return TABLES[name]


def cells(table: Table) -> list[Cell]:
    return [c for _, row in table.rows for c in row if c is not None]


def run_dir(cell: Cell, runs: str | None = None) -> str:
    """<runs or the config's output_dir>/<the config's name after the overrides>."""
    from .engine.config import load_config
    cfg = load_config(cell.config, cell.overrides)
    return os.path.join(runs if runs is not None else cfg["output_dir"], cfg["name"])


def train_command(cell: Cell, runs: str | None = None, resume: bool = False) -> str:
    args = ["vimd", "train", cell.config, *cell.overrides]
    args += [f"output_dir={runs}"] if runs is not None else []
    args += ["--resume"] if resume else []
    return " ".join(shlex.quote(a) for a in args)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_metric(folder: str, metric: Metric) -> float | None:
    """``metric.column`` of the summary row with the highest ``metric.select``; None when the run
    has no summary.csv, no evaluated row or not that column."""
    path = os.path.join(folder, "summary.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if _float(r.get(metric.select)) is not None]
    if not rows:
        return None
    return _float(max(rows, key=lambda r: _float(r[metric.select])).get(metric.column))


def gather(table: Table, runs: str | None = None) -> dict[Cell, Result]:
    out = {}
    for cell in cells(table):
        folder = run_dir(cell, runs)
        finished = os.path.isfile(os.path.join(folder, "model.safetensors"))
        started = os.path.isfile(os.path.join(folder, "summary.csv"))
        out[cell] = Result(cell, folder, train_command(cell, runs, resume=started and not finished),
                           read_metric(folder, cell.metric), finished)
    return out


# ---- output -----------------------------------------------------------------------------------
def _fmt(v: float, digits: int, sign: bool = False) -> str:
    return f"{v:{'+' if sign else ''}.{digits}f}"


def cell_text(r: Result) -> str:
    d, paper = r.cell.metric.digits, r.cell.paper
    ours = "-" if r.value is None else _fmt(r.value, d) + ("" if r.finished else "*")
    if paper is None:
        return ours
    if r.value is None:
        return f"{ours} ({_fmt(paper, d)})"
    return f"{ours} ({_fmt(paper, d)}, {_fmt(r.value - paper, d, sign=True)})"


def _md_row(items) -> str:
    return "| " + " | ".join(items) + " |"


def render_markdown(table: Table, results: dict[Cell, Result]) -> str:
    lines = [f"### {table.name}: {table.caption}", "", _md_row(["", *table.columns]),
             _md_row(["---"] * (len(table.columns) + 1))]
    for label, row in table.rows:
        lines.append(_md_row([label, *("" if c is None else cell_text(results[c]) for c in row)]))
    lines += ["", "- Cells: ours (paper, ours - paper); - no run yet; * run not finished."]
    lines += [f"- {note}" for note in table.notes]
    lacking: dict[str, list[str]] = {}
    for r in results.values():
        if r.finished and r.value is None:
            lacking.setdefault(r.run_dir, []).append(r.cell.metric.column)
    lines += [f"- {run} has no {', '.join(cols)} in its summary.csv" for run, cols in lacking.items()]
    todo = list(dict.fromkeys(r.command for r in results.values() if not r.finished))
    if todo:
        lines += ["", "Runs to make or finish:", "", "```", *todo, "```"]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("table", "row", "column", "config", "overrides", "metric", "run_dir", "finished", "ours",
               "paper", "diff")


def render_csv(table: Table, results: dict[Cell, Result]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for label, row in table.rows:
        for col, cell in zip(table.columns, row):
            if cell is None:
                continue
            r = results[cell]
            diff = None if r.value is None or cell.paper is None else r.value - cell.paper
            numbers = ("" if v is None else f"{v:.6g}" for v in (r.value, cell.paper, diff))
            w.writerow([table.name, label, col, cell.config, " ".join(cell.overrides), cell.metric.column,
                        r.run_dir, int(r.finished), *numbers])
    return buf.getvalue()


def list_tables() -> str:
    width = max(map(len, TABLES))
    return "\n".join(f"{t.name:<{width}}  {t.caption}" for t in TABLES.values()) + "\n"


def table_command(name: str | None, runs: str | None = None, out: str | None = None) -> str:
    """``vimd table``: the list of tables, or table NAME as Markdown (also OUT.md and OUT.csv)."""
    if name is None:
        return list_tables()
    table = get_table(name)
    results = gather(table, runs)
    md = render_markdown(table, results)
    if out is not None:
        stem, ext = os.path.splitext(out)
        stem = stem if ext in (".md", ".csv") else out
        os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
        for ext, text in ((".md", md), (".csv", render_csv(table, results))):
            with open(stem + ext, "w") as f:
                f.write(text)
    return md
