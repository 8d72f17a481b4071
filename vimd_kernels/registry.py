"""The one backend registry: which backends exist, whether they are usable here, how to pick one,
and the dispatch table from (kernel, backend) to the backend module's entry points.

What a backend module provides (entry points, capabilities) is the contract of
``vimd_kernels/backend.py``; each module is imported and checked against it once, on first use,
so a backend that cannot load here (no triton, no built extension) never breaks
``import vimd_kernels``.
"""
from __future__ import annotations

import glob
import importlib
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .backend import SPECS, Capabilities, Impl, load
from .native import bindings, register_fakes

KERNELS = tuple(SPECS)


_HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_RECORD = os.path.join(_HERE, "_build.json")  # written by setup.py beside the extension


def build_record() -> dict | None:
    """What the extension was built against (torch, CUDA toolkit and architectures, compiler), as
    setup.py recorded it, or None where no build has recorded it."""
    try:
        with open(BUILD_RECORD) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def torch_mismatch() -> str | None:
    """A sentence saying that the running torch is not the one the extension was built for, else None."""
    rec = build_record()
    if rec is None or rec.get("torch") == torch.__version__:
        return None
    return (f"the extension was built for torch {rec.get('torch')} and this is torch {torch.__version__}: "
            "rebuild it (pip install --no-build-isolation -e . in a checkout, or reinstall vimd)")


def _probe_extension():
    """(bindings, problem): the bindings ``vimd_kernels._C`` (importing them loads the ops library,
    which registers the C++ ops torch.ops.vimd.*_cpu / *_cuda), or None where the extension is not
    built or fails to load; problem says why a built extension did not load (None otherwise)."""
    try:
        ext = bindings()
    except ImportError as e:
        if not glob.glob(os.path.join(_HERE, "_C*.so")):
            return None, None  # not built
        problem = torch_mismatch() or f"vimd_kernels._C is built but does not load ({e})"
        warnings.warn(f"vimd_kernels: the compiled kernels are unavailable: {problem}", RuntimeWarning,
                      stacklevel=2)
        return None, problem
    register_fakes()
    return ext, None


def interpreting() -> bool:
    """Triton runs under its interpreter (TRITON_INTERPRET=1), on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _probe_interpreter() -> str | None:
    """Under TRITON_INTERPRET=1: why the interpreter cannot run the Triton kernels, else None."""
    if not _HAS_TRITON or not interpreting():
        return None
    try:
        from vimd_kernels.triton_utils import interpreter_problem
    except Exception as e:  # noqa: BLE001 - a broken triton install, named in the hint
        return f"import triton failed ({type(e).__name__}: {e})"
    return interpreter_problem()


# Probed once at import, so dispatch stays a pure lookup that torch.compile can trace.
_EXT, _EXT_PROBLEM = _probe_extension()
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_INTERP_PROBLEM = _probe_interpreter()


def _ext_cuda() -> bool:
    """The extension was built with the CUDA ops."""
    return bool(getattr(_EXT, "with_cuda", False))


def _cpu_ok() -> bool:
    return _EXT is not None  # every build has the CPU ops


def _cuda_ok() -> bool:
    return _ext_cuda() and torch.cuda.is_available()


def _triton_ok() -> bool:
    if interpreting():
        return _HAS_TRITON and _INTERP_PROBLEM is None
    return _HAS_TRITON and torch.cuda.is_available()


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple  # device types it runs on
    available: Callable[[], bool]
    hint: str | Callable[[], str]  # why it is unavailable and what to do (a callable: state-dependent)

    @property
    def install_hint(self) -> str:
        return self.hint() if callable(self.hint) else self.hint


def _cuda_hint() -> str:
    if _EXT_PROBLEM:
        return _EXT_PROBLEM
    if _ext_cuda():
        return "the extension has the CUDA kernels, but torch sees no CUDA device"
    return ("build with a CUDA toolkit and a CUDA build of torch: "
            "pip install --no-build-isolation -e . (without VIMD_SKIP_CUDA_BUILD)")


def _triton_hint() -> str:
    if interpreting() and _INTERP_PROBLEM is not None:
        return _INTERP_PROBLEM
    return "needs triton (pip install triton) and a CUDA GPU, or TRITON_INTERPRET=1 to run on CPU tensors"


BACKENDS = {
    "ref": Backend("ref", ("cpu", "cuda"), lambda: True, "always available"),
    "cpu": Backend("cpu", ("cpu",), _cpu_ok,
                   lambda: _EXT_PROBLEM or "build the C++ extension: pip install --no-build-isolation -e ."),
    "triton": Backend("triton", ("cuda", "cpu"), _triton_ok, _triton_hint),
    "cuda": Backend("cuda", ("cuda",), _cuda_ok, _cuda_hint),
}


def available_backends() -> list[str]:
    return [name for name, b in BACKENDS.items() if b.available()]


def resolve(backend: str | None, device: torch.device) -> str:
    """Pick the backend for tensors on ``device``; explicit names are checked, never silently swapped."""
    if backend is None:
        backend = os.environ.get("VIMD_BACKEND") or None
    if backend is None:
        if device.type == "cuda":
            return "cuda" if BACKENDS["cuda"].available() else "triton"
        return "cpu" if BACKENDS["cpu"].available() else "ref"
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)} or None, got {backend!r}")
    b = BACKENDS[backend]
    if device.type not in b.devices:
        raise ValueError(f"backend={backend!r} does not run on {device.type} tensors "
                         f"(it runs on {', '.join(b.devices)})")
    if not b.available():
        raise RuntimeError(f"backend {backend!r} is not available here: {b.install_hint}")
    if backend == "triton" and device.type == "cpu" and not interpreting():
        raise RuntimeError("backend 'triton' runs on CPU tensors only under the interpreter: "
                           "set TRITON_INTERPRET=1 (or move the tensors to a GPU)")
    return backend


_MODULE = {"ref": "reference"}  # backend -> module name, where they differ


def extension():
    """The bindings of the built C++/CUDA extension, ``vimd_kernels._C`` (layout constants, build
    information; the ops are torch.ops.vimd.*), or None where it is not built."""
    return _EXT


def extension_problem() -> str | None:
    """Why a built extension did not load (e.g. built for another torch), or None."""
    return _EXT_PROBLEM


def _module_name(kernel: str, backend: str) -> str:
    return f"vimd_kernels.{kernel}.{_MODULE.get(backend, backend)}"


def kernel_available(kernel: str, backend: str) -> bool:
    """The backend is usable here AND ships a module for ``kernel`` (backends land kernel by kernel)."""
    b = BACKENDS.get(backend)
    return b is not None and b.available() and importlib.util.find_spec(_module_name(kernel, backend)) is not None


# The dispatch table: (kernel, backend) -> the module's checked entry points and capabilities.
_TABLE: dict[tuple[str, str], Impl] = {}


def _load(kernel: str, backend: str) -> Impl:
    if kernel not in SPECS:
        raise ValueError(f"kernel must be one of {sorted(SPECS)}, got {kernel!r}")
    name = _module_name(kernel, backend)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        raise RuntimeError(f"backend {backend!r} has no {kernel} kernel "
                           f"(vimd_kernels/{kernel}/{_MODULE.get(backend, backend)}.py is missing)") from None
    entry = _TABLE[(kernel, backend)] = load(kernel, module)
    return entry


def impl(kernel: str, backend: str) -> Impl:
    """The entry points of ``backend``'s module for ``kernel`` (loaded and checked once)."""
    entry = _TABLE.get((kernel, backend))
    return entry if entry is not None else _load(kernel, backend)


@torch.compiler.assume_constant_result
def capabilities(kernel: str, backend: str) -> Capabilities:
    """The declared capabilities of ``backend``'s module for ``kernel``: one constant per
    (kernel, backend), so torch.compile evaluates the lookup while tracing."""
    return impl(kernel, backend).caps
