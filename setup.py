"""Build of vimd_kernels._C: the C++ CPU kernels always, the CUDA kernels when a toolkit and a CUDA
build of torch are present.

Environment:
  VIMD_SKIP_CUDA_BUILD=TRUE   build the CPU kernels only
  VIMD_CUDA_ARCHS="80;90"     compute capabilities to build SASS for (PTX of the newest is added)
  MAX_JOBS=N                  parallel compile jobs (ninja)
"""
from __future__ import annotations

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").upper() in ("1", "TRUE", "YES", "ON")


def _want_cuda() -> bool:
    if _truthy("VIMD_SKIP_CUDA_BUILD"):
        return False
    import torch
    from torch.utils.cpp_extension import CUDA_HOME
    return torch.version.cuda is not None and CUDA_HOME is not None


def cuda_extension_kwargs() -> dict:
    """nvcc flags: explicit -gencode per arch plus PTX for the newest, so the build stays small."""
    archs = [a.strip().replace(".", "") for a in
             os.environ.get("VIMD_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a.strip()]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    nvcc = ["-O3", "-std=c++17", "--use_fast_math", "--expt-relaxed-constexpr", "-lineinfo",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", *gencode]
    sources = sorted(glob.glob("csrc/cuda/*.cu")) + ["csrc/bindings_cuda.cpp"]
    return {"sources": sources, "nvcc": nvcc}


def extensions():
    import torch  # noqa: F401  (build requirement)
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/bindings.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if _want_cuda():
        kw = cuda_extension_kwargs()
        return [CUDAExtension("vimd_kernels._C", sources + kw["sources"], include_dirs=include_dirs,
                              define_macros=[("VIMD_WITH_CUDA", "1")],
                              extra_compile_args={"cxx": cxx, "nvcc": kw["nvcc"]},
                              extra_link_args=["-fopenmp"])]
    return [CppExtension("vimd_kernels._C", sources, include_dirs=include_dirs,
                         extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension
    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(ext_modules=extensions(), cmdclass=cmdclass())
