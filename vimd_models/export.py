"""Deploying a model without vimd's Python package: torch.export, then AOTInductor.

    ep = export_model(model, example)          # torch.export, vimd's ops inlined (see below)
    compile_package(ep, "model.pt2")           # AOTInductor package: compiled code + weights

``export_model`` traces the model in eval mode; while torch.export traces, vimd's Python custom ops
run their implementations inline (``vimd_kernels.ops.traced``), so the graph holds only ATen ops
and the C++ kernel ops ``torch.ops.vimd.*_cpu`` / ``*_cuda`` of the backend the model ran on. Those
are registered by vimd_kernels/libvimd_ops.so, a library with no Python in it, so the package runs
in any process that has loaded it:

    torch.ops.load_library(".../vimd_kernels/libvimd_ops.so")   # or dlopen() from C++
    runner = torch._inductor.aoti_load_package("model.pt2")     # or AOTIModelPackageLoader in C++
    out = runner(x)

Shapes are static: the package runs the example's shape (export again for another one).
See docs/deploy.md.
"""
from __future__ import annotations

import os

import torch
from torch import nn


def export_model(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``model`` (put in eval mode) traced by torch.export on ``example`` (its device and shape), with
    vimd's ops as their C++ kernels; gradients are not tracked."""
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be a tensor, got {type(example).__name__}")
    model.eval()
    with torch.no_grad():
        return torch.export.export(model, (example,))


def compile_package(ep: torch.export.ExportedProgram, path: str | os.PathLike) -> str:
    """AOT-compiles ``ep`` with AOTInductor into the package ``path`` (a .pt2 file); returns its path."""
    path = os.fspath(path)
    if not path.endswith(".pt2"):
        raise ValueError(f"path must end in .pt2 (an AOTInductor package), got {path!r}")
    from torch._inductor import aoti_compile_and_package
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return aoti_compile_and_package(ep, package_path=path)


def custom_ops(ep: torch.export.ExportedProgram) -> list[str]:
    """The names of the non-ATen ops in the exported graph (e.g. ``vimd::selective_scan_fwd_cpu``)."""
    names = set()
    for gm in ep.graph_module.modules():  # nested graphs too (e.g. the bodies of autocast regions)
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            target = node.target
            if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) \
                    and target.namespace != "aten":
                names.add(f"{target.namespace}::{target._opname}")
    return sorted(names)
