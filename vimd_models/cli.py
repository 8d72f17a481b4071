"""The ``vimd`` command: train, eval, check-data, demo, flops, bench, models, table, export.

    vimd train configs/vimd_cub.yaml data.root=/data/CUB_200_2011 train.epochs=10
    vimd train configs/vimd_cub.yaml --resume            # continue <output_dir>/<name>/
    vimd train configs/vimd_cub.yaml --resume optim.lr=1e-4   # ... with a lower learning rate
    vimd check-data configs/vimd_cub.yaml data.root=/data/CUB_200_2011
    vimd eval configs/vimd_cub.yaml --weights runs/vimd_cub/best.safetensors
    vimd demo [--out runs/demo] [--scale 1.0]
    vimd flops vim_tiny_patch16_224 --input 3,224,224
    vimd bench kernels --preset cpu --out results/bench   # kernel benchmark (vimd bench kernels --help)
    vimd bench models --quick                             # model benchmark (vimd bench models --help)
    vimd table vimd --runs runs -o results/vimd       # the paper's table from finished runs
    vimd export dvmsr --input 1,3,64,64 --out dvmsr.pt2  # AOTInductor package (docs/deploy.md)

User mistakes (config, data, checkpoint) and a diverged run print ``vimd: error: ...`` (one line,
or a short list of the bad files / the offending YAML lines) and exit with 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vimd", description="ViMD / DVMSR / DFKD-FGVC training and evaluation")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a task from a YAML config")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    t.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint (default: the run folder's checkpoint.safetensors)")
    t.set_defaults(func=_cmd_train, trailing="overrides")
    e = sub.add_parser("eval", help="evaluate weights on the config's evaluation data")
    e.add_argument("config")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--weights", required=True, help="model .safetensors (or a training checkpoint)")
    e.set_defaults(func=_cmd_eval, trailing="overrides")
    c = sub.add_parser("check-data", help="count the config's images per split and class and check "
                                          "that every file opens (as train does first)")
    c.add_argument("config")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(func=_cmd_check_data, trailing="overrides")
    d = sub.add_parser("demo", help="the end-to-end demo on synthetic data (no data on disk)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--scale", type=float, default=1.0, help="multiply every training length by this")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--backend", default=None)
    d.set_defaults(func=_cmd_demo)
    sp = sub.add_parser("sr-photos", help="DVMSR x4 with and without teacher supervision vs bicubic on real "
                                         "photos scikit-image ships (train on 10, test on 5 others)")
    sp.add_argument("--out", default="runs/sr_photos")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--backend", default=None)
    sp.add_argument("--iterations", type=int, default=None, help="training iterations of each model "
                                                                "(default: the photos_sr config's)")
    sp.set_defaults(func=_cmd_sr_photos)
    f = sub.add_parser("flops", help="count FLOPs of a registered model")
    f.add_argument("model")
    f.add_argument("--input", default="3,224,224", help="C,H,W of one input")
    f.add_argument("kwargs", nargs="*", help="model keyword arguments key=value")
    f.set_defaults(func=_cmd_flops, trailing="kwargs")
    b = sub.add_parser("bench", help="benchmark the kernels (against the upstream ones where installed) "
                                     "or the models; results in ./vimd-bench/<device> unless --out")
    b.add_argument("which", choices=list(BENCHMARKS))
    b.add_argument("args", nargs=argparse.REMAINDER)
    b.set_defaults(func=_cmd_bench)
    sub.add_parser("models", help="list registered models").set_defaults(func=_cmd_models)
    tb = sub.add_parser("table", help="a paper's result table from finished runs (no NAME: list the tables)")
    tb.add_argument("name", nargs="?")
    tb.add_argument("--runs", default=None, help="folder of the run folders (default: each config's output_dir)")
    tb.add_argument("-o", "--out", default=None, help="also write OUT.md and OUT.csv")
    tb.set_defaults(func=_cmd_table)
    x = sub.add_parser("export", help="export a registered model with torch.export and compile it "
                                      "with AOTInductor into a .pt2 package that runs without vimd")
    x.add_argument("model")
    x.add_argument("--input", required=True, help="B,C,H,W of the input the package runs")
    x.add_argument("--out", required=True, help="the package to write (.pt2)")
    x.add_argument("--weights", default=None, help="checkpoint to load (default: random init)")
    x.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    x.add_argument("kwargs", nargs="*", help="model keyword arguments key=value")
    x.set_defaults(func=_cmd_export, trailing="kwargs")
    from .infer import add_commands
    add_commands(sub)  # sr, predict
    return p


def _kwargs(items) -> dict:
    import yaml
    out = {}
    for it in items:
        if "=" not in it:
            raise UserError(f"model argument '{it}' must look like key=value")
        k, v = it.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def _shape(text: str, names: str) -> tuple[int, ...]:
    """``--input``'s sizes, one positive integer per name of ``names`` (e.g. "C,H,W")."""
    n = len(names.split(","))
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != n or min(shape) < 1:
        raise UserError(f"--input must be {names} ({n} positive integers), got {text!r}")
    return shape


def _cmd_train(a) -> int:
    from .engine.config import load_config
    from .engine.trainer import train
    cfg = load_config(a.config, a.overrides)
    res = train(cfg, resume=a.resume)
    last = {k: round(v, 4) if isinstance(v, float) else v for k, v in res["last"].items() if k.startswith("val_")}
    print(f"run {res['run_dir']}: params {res['params']:,}; last epoch {json.dumps(last)}")
    return 0


def _cmd_eval(a) -> int:
    from .checkpoint import load_into, load_weights
    from .distill.tasks import create, task_class
    from .engine.config import load_config
    from .engine.kinds import build_data, evaluate
    cfg = load_config(a.config, a.overrides)
    # a distillation config evaluates its student on the student's view
    _, eval_ds, num_classes = build_data(cfg)
    extra = {} if num_classes is None else {"num_classes": num_classes}
    model = create(cfg["model"], cfg, "model", **extra)
    load_into(model, load_weights(a.weights), a.weights)
    m = evaluate(model, task_class(cfg["task"]).kind, eval_ds, cfg)
    for k, v in m.items():
        print(f"{k}: {v:.4f}")
    return 0


def _cmd_check_data(a) -> int:
    from .data.check import check_data
    from .engine.config import load_config
    from .engine.kinds import build_data
    cfg = load_config(a.config, a.overrides)
    train_ds, eval_dss, _ = build_data(cfg)
    n = check_data(train_ds, eval_dss, progress=cfg["train"]["progress"], per_group=True)
    print(f"data: all {n:,} image files open" if n else "data: synthetic, no files to check")
    return 0


def _cmd_demo(a) -> int:
    from .engine.demo import run_demo
    run_demo(a.out, scale=a.scale, seed=a.seed, backend=a.backend)
    return 0


def _cmd_sr_photos(a) -> int:
    from .engine.photos import run_photos
    if a.iterations is not None and a.iterations <= 0:
        raise UserError(f"--iterations must be a positive integer, got {a.iterations}")
    run_photos(a.out, seed=a.seed, backend=a.backend, iterations=a.iterations)
    return 0


def _cmd_models(a) -> int:
    import vimd_models
    print("\n".join(vimd_models.list_models()))
    return 0


def _cmd_table(a) -> int:
    from .tables import table_command
    print(table_command(a.name, a.runs, a.out), end="")
    return 0


def _cmd_flops(a) -> int:
    import vimd_models
    from .flops import count_flops, paper_note
    try:
        model = vimd_models.create_model(a.model, **_kwargs(a.kwargs))
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    shape = _shape(a.input, "C,H,W")
    res = count_flops(model, (1, *shape))
    for k in ("counter", "full", "custom"):
        if k in res:
            print(f"{k}: {res[k] / 1e9:.4f} G{res.get('unit', '')}")
    note = paper_note(a.model, shape)
    if note:
        print(f"paper: {note}")
    return 0


def _cmd_export(a) -> int:
    import torch

    import vimd_models
    from vimd_kernels.native import library_path
    from .export import compile_package, custom_ops, export_model
    shape = _shape(a.input, "B,C,H,W")
    if not a.out.endswith(".pt2"):
        raise UserError(f"--out must end in .pt2, got {a.out!r}")
    if a.device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {a.device!r}")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device")
    try:
        model = vimd_models.create_model(a.model, checkpoint_path=a.weights, **_kwargs(a.kwargs))
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    model = model.to(a.device)
    ep = export_model(model, torch.rand(shape, device=a.device))
    path = compile_package(ep, a.out)
    print(f"package: {path}")
    print(f"ops: {', '.join(custom_ops(ep)) or 'ATen only'}")
    print(f"load first: torch.ops.load_library({library_path()!r})")
    return 0


BENCHMARKS = {"kernels": "vimd_kernels.bench.kernels", "models": "vimd_models.bench"}


def _cmd_bench(a) -> int:
    import importlib
    importlib.import_module(BENCHMARKS[a.which]).main(a.args, prog=f"vimd bench {a.which}")
    return 0


def _one_line(msg: str) -> str:
    """A UserError raised in a DataLoader worker arrives wrapped with the worker's traceback."""
    if "Original Traceback" in msg:
        last = msg.strip().splitlines()[-1]
        return last.split("UserError: ", 1)[-1]
    return msg


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    a, rest = parser.parse_known_args(argv)
    resume = getattr(a, "resume", None)
    if resume and "=" in resume and not os.path.exists(resume):  # --resume optim.lr=1e-4: an override
        a.resume, a.overrides = "auto", [*a.overrides, resume]
    if rest:  # key=value arguments may come after options: vimd eval cfg --weights w data.root=...
        field = getattr(a, "trailing", None)
        if field and all("=" in r and not r.startswith("-") for r in rest):
            setattr(a, field, list(getattr(a, field)) + rest)
        else:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return a.func(a)
    except UserError as e:
        print(f"vimd: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vimd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output left (`vimd models | head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 141  # as a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
