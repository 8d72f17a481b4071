"""The model zoo from the command line: ``vimd models``, ``flops``, ``export`` and ``bench``."""
from __future__ import annotations

import argparse
import importlib

from ..errors import UserError
from . import command, parse_kwargs, parse_shape


@command("models", "list registered models")
def models(a) -> int:
    from ..registry import list_models
    print("\n".join(list_models()))
    return 0


def _create(name: str, items, **options):
    from ..factory import create_model
    try:
        return create_model(name, **options, **parse_kwargs(items))
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None


def _flops_args(p) -> None:
    p.add_argument("model")
    p.add_argument("--input", default="3,224,224", help="C,H,W of one input")
    p.add_argument("kwargs", nargs="*", help="model keyword arguments key=value")


@command("flops", "count FLOPs of a registered model", _flops_args, trailing="kwargs")
def flops(a) -> int:
    from ..flops import count_flops, paper_note
    model = _create(a.model, a.kwargs)
    shape = parse_shape(a.input, "C,H,W")
    res = count_flops(model, (1, *shape))
    for k in ("counter", "full", "custom"):
        if k in res:
            print(f"{k}: {res[k] / 1e9:.4f} G{res.get('unit', '')}")
    note = paper_note(a.model, shape)
    if note:
        print(f"paper: {note}")
    return 0


def _export_args(p) -> None:
    p.add_argument("model")
    p.add_argument("--input", required=True, help="B,C,H,W of the input the package runs")
    p.add_argument("--out", required=True, help="the package to write (.pt2)")
    p.add_argument("--weights", default=None, help="checkpoint to load (default: random init)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("kwargs", nargs="*", help="model keyword arguments key=value")


@command("export", "export a registered model with torch.export and compile it with AOTInductor into a "
         ".pt2 package that runs without vimd", _export_args, trailing="kwargs")
def export(a) -> int:
    import torch

    from vimd_kernels.native import library_path

    from ..export import compile_package, custom_ops, export_model
    from ..weights import load
    shape = parse_shape(a.input, "B,C,H,W")
    if not a.out.endswith(".pt2"):
        raise UserError(f"--out must end in .pt2, got {a.out!r}")
    if a.device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {a.device!r}")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device")
    model = _create(a.model, a.kwargs)
    load(model, a.weights, what="--weights")
    model = model.to(a.device)
    ep = export_model(model, torch.rand(shape, device=a.device))
    path = compile_package(ep, a.out)
    print(f"package: {path}")
    print(f"ops: {', '.join(custom_ops(ep)) or 'ATen only'}")
    print(f"load first: torch.ops.load_library({library_path()!r}); inputs must be contiguous (NCHW)")
    return 0


BENCHMARKS = {"kernels": "vimd_kernels.bench.kernels", "models": "vimd_models.bench"}


def _bench_args(p) -> None:
    p.add_argument("which", choices=list(BENCHMARKS))
    p.add_argument("args", nargs=argparse.REMAINDER)


@command("bench", "benchmark the kernels (against the upstream ones where installed) or the models; "
         "results in ./vimd-bench/<device> unless --out", _bench_args)
def bench(a) -> int:
    importlib.import_module(BENCHMARKS[a.which]).main(a.args, prog=f"vimd bench {a.which}")
    return 0
