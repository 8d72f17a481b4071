"""The C++ ops of vimd_kernels/libvimd_ops.so, ``torch.ops.vimd.*_cpu`` (every build) and
``torch.ops.vimd.*_cuda`` (CUDA builds): the one import of the extension's bindings
(``bindings``) and the ops' namespace (``ops``), where the library is, the ops' fake (meta)
kernels, and ``traced``, which puts them into exported graphs.

The library registers each op's schema and its CPU or CUDA kernel itself (the tables at the end of
csrc/cpu/ops.cpp and csrc/cuda/ops.cpp) and needs no Python: a graph exported with these ops (see
``vimd_models.export``) runs in a process that only loads the library, with
``torch.ops.load_library(library_path())`` or, in C++, ``dlopen``. Importing ``vimd_kernels._C``
loads it too (the bindings link it). The fakes below let torch.export and torch.compile trace the
forward ops and the inference steps (which update their state argument in place); the backward
ops run only inside the autograd of vimd's Python custom ops (``vimd_kernels/ops.py``), never in a
traced graph.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

LIBRARY_FILE = "libvimd_ops.so"
BINDINGS = f"{__package__}._C"  # the extension's Python module, vimd_kernels._C


def bindings() -> ModuleType:
    """The extension's bindings, ``vimd_kernels._C``: its layout constants and build information.
    Importing them loads the ops library (the bindings link it), which registers the C++ ops.
    Raises ImportError where the extension is not built or does not load. The registry's probe
    and every backend module of the built kernels get the bindings from here."""
    return importlib.import_module(BINDINGS)


def ops():
    """The C++ ops' namespace, ``torch.ops.vimd`` (``*_cpu``, and ``*_cuda`` in CUDA builds), once
    ``bindings()`` has loaded the library (the registry does at import)."""
    return torch.ops.vimd


def library_path() -> str:
    """The ops library of this installation (present once the extension is built)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_FILE)


def traced(op, fn):
    """The custom op ``op``, or while torch.export traces, ``fn``: the op's implementation, run inline,
    so that the exported graph holds the ops it calls (these C++ ops, or ATen ops) instead of a
    Python custom op. Forward ops only: the inline call has no autograd formula of its own, and
    exported graphs are for inference."""
    return fn if torch.compiler.is_exporting() else op


def _contiguous_like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _scan_out(u, A, last_dtype):
    return _contiguous_like(u), u.new_empty((*u.shape[:-1], A.shape[-1]), dtype=last_dtype)


def _scan_fwd_cpu(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse):
    return _scan_out(u, A, A.dtype)  # float64 in, float64 state


def _scan_fwd_cuda(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse,
                   chunk_len):
    return _scan_out(u, A, torch.float32)


def _scan_bi_fwd_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_len):
    return _scan_out(u, A, torch.float32)  # u (2, batch, dim, L), A (2, dim, N)


def _conv_fwd(x, weight, bias, silu, reverse):
    return _contiguous_like(x)


def _conv_bi_fwd(x, weight, bias, silu):
    return x.new_empty((2, *x.shape))


def _state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return _contiguous_like(x)  # the state is updated in place


def _conv_update(x, conv_state, weight, bias, silu, cache_seqlens):
    return _contiguous_like(x)  # conv_state is updated in place


# op name -> fake kernel (registered for the ops this build has)
FAKES = {
    "selective_scan_fwd_cpu": _scan_fwd_cpu,
    "causal_conv1d_fwd_cpu": _conv_fwd,
    "selective_scan_fwd_cuda": _scan_fwd_cuda,
    "selective_scan_bi_fwd_cuda": _scan_bi_fwd_cuda,
    "causal_conv1d_fwd_cuda": _conv_fwd,
    "causal_conv1d_bi_fwd_cuda": _conv_bi_fwd,
    "selective_state_update_cpu": _state_update,
    "causal_conv1d_update_cpu": _conv_update,
    "selective_state_update_cuda": _state_update,
    "causal_conv1d_update_cuda": _conv_update,
}


def register_fakes() -> None:
    """Registers the fake kernels of the loaded library's forward ops (once)."""
    for name, fn in FAKES.items():
        if hasattr(torch.ops.vimd, name):
            torch.library.register_fake(f"vimd::{name}")(fn)
