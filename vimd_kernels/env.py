"""Environment report: ``python -m vimd_kernels.env`` (paste it into bug reports)."""
from __future__ import annotations

import os
import platform
import sys


def _try(fn, default="n/a"):
    try:
        return fn()
    except Exception as e:  # a report must never crash on a half-broken install
        return f"{default} ({type(e).__name__}: {e})"


def _caps(caps) -> str:
    """One line of a backend module's declared capabilities."""
    parts = [", ".join(str(d).replace("torch.", "") for d in caps.dtypes)]
    parts += [f"{label} <= {v}" for label, v in (("N", caps.max_state), ("width", caps.max_width))
              if v is not None]
    if caps.pass_state is not None:
        parts.append(f"N > {caps.pass_state} as passes over {caps.pass_state}-state slices")
    parts += [label for label, on in (("reverse", caps.reverse), ("deterministic", caps.deterministic),
                                      ("row views", caps.row_views)) if on]
    return "; ".join(parts)


def report() -> list[tuple[str, str]]:
    """(key, value) rows describing the Python/torch/triton/extension/backends situation."""
    import torch

    from . import registry

    rows = [("python", sys.version.split()[0] + f" ({platform.platform()})"),
            ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
            ("cpu capability", _try(torch.backends.cpu.get_cpu_capability)),
            ("cpu threads", str(torch.get_num_threads()))]
    try:
        import triton
        rows.append(("triton", triton.__version__))
    except ImportError:
        rows.append(("triton", "not installed"))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{p.name}, sm_{p.major}{p.minor}, "
                                      f"{p.total_memory / 2**30:.1f} GiB"))
    else:
        rows.append(("cuda device", "none"))
    rec = registry.build_record()
    if rec is not None:
        cuda = (f"CUDA {rec['cuda_toolkit']} ({rec['cuda_home']}), sm_{', sm_'.join(map(str, rec['cuda_archs']))}"
                if rec.get("cuda_toolkit") else "no CUDA kernels")
        rows.append(("built with", f"torch {rec['torch']}; {cuda}; {rec['cxx']}; Python {rec['python']}"))
        mismatch = registry.torch_mismatch()
        if mismatch:
            rows.append(("  WARNING", mismatch))
    ext = registry.extension()
    if ext is None:
        rows.append(("vimd_kernels._C", registry.extension_problem() or "not built"))
    else:
        info = _try(ext.build_info) if hasattr(ext, "build_info") else "built (no build_info())"
        rows.append(("vimd_kernels._C", f"{getattr(ext, '__file__', '?')}"))
        from .native import library_path
        rows.append(("  ops library", library_path()))  # torch.ops.vimd.*; loads without Python
        if isinstance(info, dict):
            rows.extend((f"  _C.{k}", str(v)) for k, v in info.items())
        else:
            rows.append(("  _C.build_info", str(info)))
    rows.append(("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset")))
    rows.append(("VIMD_BACKEND", os.environ.get("VIMD_BACKEND", "unset")))
    for name, b in registry.BACKENDS.items():
        if not b.available():
            rows.append((f"backend {name}", f"missing: {b.install_hint}"))
            continue
        kernels = [k for k in registry.KERNELS if registry.kernel_available(k, name)]
        missing = sorted(set(registry.KERNELS) - set(kernels))
        rows.append((f"backend {name}", "available" + (f" (missing kernels: {', '.join(missing)})"
                                                       if missing else "")))
        rows.extend((f"  {k}", _try(lambda k=k: _caps(registry.impl(k, name).caps))) for k in kernels)
    rows.append(("default backend (cpu tensors)", _try(lambda: registry.resolve(None, torch.device("cpu")))))
    if torch.cuda.is_available():
        rows.append(("default backend (cuda tensors)",
                     _try(lambda: registry.resolve(None, torch.device("cuda")))))
    return rows


def main() -> None:
    rows = report()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
