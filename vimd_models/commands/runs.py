"""``vimd train``, ``vimd eval`` and ``vimd check-data``: a config's run, its evaluation, its data."""
from __future__ import annotations

import json

from . import command, config_args


def _train_args(p) -> None:
    config_args(p)
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint (default: the run folder's checkpoint.safetensors)")


@command("train", "train a task from a YAML config", _train_args, trailing="overrides")
def train(a) -> int:
    from ..engine.config import load_config
    from ..engine.trainer import train
    cfg = load_config(a.config, a.overrides)
    res = train(cfg, resume=a.resume)
    last = {k: round(v, 4) if isinstance(v, float) else v for k, v in res["last"].items() if k.startswith("val_")}
    print(f"run {res['run_dir']}: params {res['params']:,}; last epoch {json.dumps(last)}")
    return 0


def _eval_args(p) -> None:
    config_args(p)
    p.add_argument("--weights", required=True,
                   help="model .safetensors, a training checkpoint, or an official release file")


@command("eval", "evaluate weights on the config's evaluation data", _eval_args, trailing="overrides")
def evaluate(a) -> int:
    from ..engine.config import load_config
    from ..engine.kinds import build_data, evaluate
    from ..tasks import model_from_config, task_class
    from ..weights import load
    cfg = load_config(a.config, a.overrides)
    # a distillation config evaluates its student on the student's view
    _, eval_ds, num_classes = build_data(cfg)
    model = model_from_config(cfg, **({} if num_classes is None else {"num_classes": num_classes}))
    load(model, a.weights, what="--weights")
    for k, v in evaluate(model, task_class(cfg["task"]).kind, eval_ds, cfg).items():
        print(f"{k}: {v:.4f}")
    return 0


@command("check-data", "count the config's images per split and class and check that every file opens "
         "(as train does first)", config_args, trailing="overrides")
def check_data(a) -> int:
    from ..data.check import check_data
    from ..engine.config import load_config
    from ..engine.kinds import build_data
    cfg = load_config(a.config, a.overrides)
    train_ds, eval_dss, _ = build_data(cfg)
    n = check_data(train_ds, eval_dss, progress=cfg["train"]["progress"], per_group=True,
                   mode="headers" if cfg["data"]["check"] == "headers" else "full")
    print(f"data: all {n:,} image files open" if n else "data: synthetic, no files to check")
    return 0
