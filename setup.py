"""Build of the kernels: vimd_kernels/libvimd_ops.so, the C++ CPU ops always and the CUDA ops when a
toolkit and a CUDA build of torch are present, registered with torch's dispatcher (torch.ops.vimd.*)
and free of Python (it loads into a C++ program, or with torch.ops.load_library); and the pybind11
module vimd_kernels._C (layout constants, build information), which links it.

Environment:
  VIMD_SKIP_CUDA_BUILD=TRUE   build the CPU kernels only
  VIMD_CUDA_ARCHS="80;90"     compute capabilities to build SASS for (PTX of the newest is added)
  MAX_JOBS=N                  parallel compile jobs (ninja)
"""
from __future__ import annotations

import glob
import os
import platform
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
    return {"sources": sorted(glob.glob("csrc/cuda/*.cu")) + ["csrc/cuda/ops.cpp"], "nvcc": nvcc}


# Per-ISA builds of the CPU kernels: CPU_KERNELS is compiled once per ISA with these flags (and
# CPU_CAPABILITY=<NAME>, which gives at::vec and our kernels a per-ISA namespace); csrc/cpu/ops.cpp
# picks one at run time from at::get_cpu_capability(). Everything else gets the baseline flags, so
# the library never executes an instruction the CPU lacks.
CPU_KERNELS = "csrc/cpu/kernels.cpp"
ISA_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}


def _cpu_isas() -> list[str]:
    if platform.machine().lower() in ("x86_64", "amd64"):
        return ["default", "avx2", "avx512"]
    return ["default"]


def _cpu_sources() -> list[str]:
    """The baseline-ISA sources of the ops library (CPU_KERNELS is built per ISA by BuildExt)."""
    return [s for s in sorted(glob.glob("csrc/cpu/*.cpp")) if s != CPU_KERNELS]


OPS_EXT = "vimd_kernels.libvimd_ops"  # the ops library: vimd_kernels/libvimd_ops.so
OPS_FILE = "libvimd_ops.so"
BINDINGS_EXT = "vimd_kernels._C"


def extensions():
    import torch  # noqa: F401  (build requirement)
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cxx = ["-O3", "-std=c++17", "-fopenmp", "-g0"]  # -g0: no debug info (build time, .so size)
    include_dirs = [os.path.join(ROOT, "csrc")]
    macros = [(f"VIMD_ISA_{isa.upper()}", "1") for isa in _cpu_isas() if isa != "default"]
    if _want_cuda():
        kw = cuda_extension_kwargs()
        cuda_macros = [("VIMD_WITH_CUDA", "1")]
        ops = CUDAExtension(OPS_EXT, _cpu_sources() + kw["sources"], include_dirs=include_dirs,
                            define_macros=macros + cuda_macros,
                            extra_compile_args={"cxx": cxx, "nvcc": kw["nvcc"]},
                            extra_link_args=["-fopenmp"])
    else:
        cuda_macros = []
        ops = CppExtension(OPS_EXT, _cpu_sources(), include_dirs=include_dirs, define_macros=macros,
                           extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    bindings = CppExtension(BINDINGS_EXT, ["csrc/bindings.cpp"], include_dirs=include_dirs,
                            define_macros=macros + cuda_macros, extra_compile_args={"cxx": cxx})
    return [ops, bindings]  # in this order: the bindings link the ops library


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension):
        """BuildExtension that builds the ops library (CPU_KERNELS compiled once per ISA, with that
        ISA's flags; no libtorch_python, so no Python at load time) and links the bindings to it.

        Each ISA's build gets its own output folder (its own ninja file), so they compile in
        parallel (MAX_JOBS at a time); the remaining sources then build and link as usual.
        """

        def get_ext_filename(self, fullname):
            name = super().get_ext_filename(fullname)
            if fullname.split(".")[-1] == OPS_EXT.split(".")[-1]:  # a shared library, not a module
                return os.path.join(os.path.dirname(name), OPS_FILE)
            return name

        def build_extension(self, ext):
            if ext.name == OPS_EXT:
                self._build_ops(ext)
            else:
                ops_dir = os.path.dirname(self.get_ext_fullpath(OPS_EXT))
                ext.library_dirs = list(ext.library_dirs) + [ops_dir]
                ext.extra_link_args = list(ext.extra_link_args) + [f"-l:{OPS_FILE}", "-Wl,-rpath,$ORIGIN"]
                super().build_extension(ext)

        def _build_ops(self, ext):
            base = ext.extra_compile_args
            macros = ext.define_macros + [(m,) for m in ext.undef_macros]

            def compile_one(isa):
                flags = ISA_FLAGS[isa]
                post = ({**base, "cxx": list(base["cxx"]) + flags} if isinstance(base, dict)
                        else list(base) + flags)
                out_dir = os.path.join(self.build_temp, "isa_" + isa)
                return self.compiler.compile([CPU_KERNELS], output_dir=out_dir, macros=macros,
                                             include_dirs=ext.include_dirs, debug=self.debug,
                                             extra_postargs=post, depends=ext.depends)

            jobs = max(1, int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1))
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                objects = [o for objs in pool.map(compile_one, _cpu_isas()) for o in objs]
            ext.extra_objects = list(ext.extra_objects or []) + objects
            ext.libraries = [lib for lib in ext.libraries if lib != "torch_python"]
            ext.extra_link_args = list(ext.extra_link_args) + [f"-Wl,-soname,{OPS_FILE}"]
            super().build_extension(ext)

    return {"build_ext": BuildExt.with_options(use_ninja=True)}


setup(ext_modules=extensions(), cmdclass=cmdclass())
