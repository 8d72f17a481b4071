"""Build of vimd_kernels._C: the C++ CPU kernels always, the CUDA kernels when a toolkit and a CUDA
build of torch are present.

Environment:
  VIMD_SKIP_CUDA_BUILD=TRUE   build the CPU kernels only
  VIMD_CUDA_ARCHS="80;90"     compute capabilities to build SASS for (PTX of the newest is added)
  VIMD_SCAN_LANES=16|32       the scan backward's lanes per row (default 16; 32 for A/B timing)
  MAX_JOBS=N                  parallel compile jobs (ninja)
"""
from __future__ import annotations

import glob
import os
import platform
import re
from concurrent.futures import ThreadPoolExecutor

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
    # --threads: nvcc compiles the -gencode targets of one file in parallel (few files, 2-3 archs).
    # -warn-spills: ptxas warns "Registers are spilled to local memory in function ..." (a kernel
    # that spills in a user's build, e.g. for an arch CI does not check, says so in the build log).
    nvcc = ["-O3", "-std=c++17", "--use_fast_math", "--expt-relaxed-constexpr", "-lineinfo",
            "--threads", "4", "-Xptxas=-warn-spills",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", *gencode]
    # The scan backward's row width (csrc/cuda/params.h): 16 lanes (default) or 32, for A/B timing.
    lanes = os.environ.get("VIMD_SCAN_LANES", "").strip()
    if lanes not in ("", "16", "32"):
        raise ValueError(f"VIMD_SCAN_LANES must be 16 or 32, got {lanes!r}")
    defines = [f"-DVIMD_SCAN_LANES={lanes}"] if lanes else []
    sources = sorted(glob.glob("csrc/cuda/*.cu")) + ["csrc/bindings_cuda.cpp"]
    return {"sources": sources, "nvcc": nvcc + defines, "cxx": defines}


# Per-ISA builds of the CPU kernels: csrc/cpu/isa_<name>.cpp is compiled with these flags (and
# CPU_CAPABILITY=<NAME>, which gives at::vec and our kernels a per-ISA namespace); csrc/cpu/ops.cpp
# picks one at run time from at::get_cpu_capability(). Everything else gets the baseline flags, so
# the library never executes an instruction the CPU lacks.
ISA_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}


def _isa_of(source: str) -> str | None:
    m = re.search(r"isa_([a-z0-9]+)\.cpp$", source)
    return m.group(1) if m else None


def _cpu_isas() -> list[str]:
    if platform.machine().lower() in ("x86_64", "amd64"):
        return ["default", "avx2", "avx512"]
    return ["default"]


def _cpu_sources() -> list[str]:
    isas = _cpu_isas()
    return ["csrc/bindings.cpp"] + [s for s in sorted(glob.glob("csrc/cpu/*.cpp"))
                                    if _isa_of(s) is None or _isa_of(s) in isas]


def extensions():
    import torch  # noqa: F401  (build requirement)
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = _cpu_sources()
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-g0"]  # -g0: no debug info (build time, .so size)
    include_dirs = [os.path.join(ROOT, "csrc")]
    macros = [(f"VIMD_ISA_{isa.upper()}", "1") for isa in _cpu_isas() if isa != "default"]
    if _want_cuda():
        kw = cuda_extension_kwargs()
        return [CUDAExtension("vimd_kernels._C", sources + kw["sources"], include_dirs=include_dirs,
                              define_macros=macros + [("VIMD_WITH_CUDA", "1")],
                              extra_compile_args={"cxx": cxx + kw["cxx"], "nvcc": kw["nvcc"]},
                              extra_link_args=["-fopenmp"])]
    return [CppExtension("vimd_kernels._C", sources, include_dirs=include_dirs, define_macros=macros,
                         extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension):
        """BuildExtension that compiles csrc/cpu/isa_<name>.cpp with that ISA's flags.

        Each ISA file gets its own output folder (its own ninja file), so they compile in parallel
        (MAX_JOBS at a time); the remaining sources then build and link as usual.
        """

        def build_extension(self, ext):
            isa_sources = [s for s in ext.sources if _isa_of(s)]
            if isa_sources:
                ext.sources = [s for s in ext.sources if not _isa_of(s)]
                base = ext.extra_compile_args
                macros = ext.define_macros + [(m,) for m in ext.undef_macros]

                def compile_one(src):
                    flags = ISA_FLAGS[_isa_of(src)]
                    post = ({**base, "cxx": list(base["cxx"]) + flags} if isinstance(base, dict)
                            else list(base) + flags)
                    out_dir = os.path.join(self.build_temp, "isa_" + _isa_of(src))
                    return self.compiler.compile([src], output_dir=out_dir, macros=macros,
                                                 include_dirs=ext.include_dirs, debug=self.debug,
                                                 extra_postargs=post, depends=ext.depends)

                jobs = max(1, int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1))
                with ThreadPoolExecutor(max_workers=jobs) as pool:
                    objects = [o for objs in pool.map(compile_one, isa_sources) for o in objs]
                ext.extra_objects = list(ext.extra_objects or []) + objects
            super().build_extension(ext)

    return {"build_ext": BuildExt.with_options(use_ninja=True)}


setup(ext_modules=extensions(), cmdclass=cmdclass())
