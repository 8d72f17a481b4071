"""Build of the kernels: vimd_kernels/libvimd_ops.so, the C++ CPU ops always and the CUDA ops when a
toolkit and a CUDA build of torch are present, registered with torch's dispatcher (torch.ops.vimd.*)
and free of Python (it loads into a C++ program, or with torch.ops.load_library); and the pybind11
module vimd_kernels._C (layout constants, build information), which links it.

The C++ standard is the one torch.utils.cpp_extension uses for the torch being built against (no
-std flag of our own), for g++ and nvcc alike. The CUDA toolkit is looked for where users have it:
CUDA_HOME, CUDA_PATH, the toolkit nvcc on PATH belongs to (asked of nvcc itself, so a wrapper script
or a link in another bin folder leads to the real toolkit), /usr/local/cuda. A toolkit that is found
but cannot build for this torch (headers missing, another CUDA major version, an architecture its
nvcc lacks) stops the build with one line; a CUDA torch with no toolkit at all builds the CPU
kernels and says so.

Environment:
  VIMD_SKIP_CUDA_BUILD=TRUE   build the CPU kernels only
  VIMD_CUDA_ARCHS="80;90"     compute capabilities to build SASS for (PTX of the newest is added);
                              default: those of the visible GPUs, else DEFAULT_ARCHS
  CUDA_HOME=/path/to/cuda     the toolkit to build with
  MAX_JOBS=N                  parallel compile jobs (ninja)
"""
from __future__ import annotations

import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").upper() in ("1", "TRUE", "YES", "ON")


DEFAULT_ARCHS = "80;90"  # A100 and H100/H200, when no GPU is visible at build time
SKIP_HINT = "set VIMD_SKIP_CUDA_BUILD=TRUE for a CPU-only build"


def _stop(msg: str):
    """End the build with one line (pip shows it as the reason the build failed)."""
    sys.exit(f"vimd build: {msg}")


def _nvcc_toolkit(nvcc: str) -> str | None:
    """The toolkit folder of an nvcc on PATH, as nvcc itself reports it (its TOP), so that a link or
    a wrapper script in another bin folder leads to the real toolkit."""
    try:
        out = subprocess.run([nvcc, "-v", "-x", "cu", "-E", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)
    return os.path.realpath(m.group(1).strip()) if m else None


def find_cuda_home() -> tuple[str, str] | None:
    """(toolkit folder, how it was found), or None where no toolkit is on this machine."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var], f"${var}"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = _nvcc_toolkit(nvcc) or os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        return home, f"nvcc on PATH ({nvcc})"
    if os.path.isfile("/usr/local/cuda/bin/nvcc"):
        return os.path.realpath("/usr/local/cuda"), "/usr/local/cuda"
    return None


def _nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release [\d.]+, V([\d.]+)", out)
    if not m:
        _stop(f"cannot read the version of {nvcc} ({out.strip()[-80:]!r}); {SKIP_HINT}")
    return m.group(1)


def cuda_archs(nvcc: str) -> list[str]:
    """VIMD_CUDA_ARCHS, else the visible GPUs' compute capabilities, else DEFAULT_ARCHS; each checked
    against what this nvcc can build."""
    import torch

    spec = os.environ.get("VIMD_CUDA_ARCHS", "")
    if spec.strip():
        archs = [a.strip().replace(".", "").removeprefix("sm_") for a in spec.replace(",", ";").split(";")]
        archs = [a for a in archs if a]
        if not all(a.isdigit() for a in archs):
            _stop(f"VIMD_CUDA_ARCHS must list compute capabilities such as \"80;90\", got {spec!r}")
    elif torch.cuda.is_available():
        archs = sorted({"%d%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())},
                       key=int)
    else:
        archs = DEFAULT_ARCHS.split(";")
    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True).stdout
    known = set(re.findall(r"compute_(\d+)", out))
    missing = [a for a in archs if known and a not in known]
    if missing:
        _stop(f"this nvcc cannot build for sm_{', sm_'.join(missing)} (it knows {', '.join(sorted(known, key=int))}); "
              f"set VIMD_CUDA_ARCHS, or {SKIP_HINT}")
    return sorted(set(archs), key=int)


def cuda_toolkit() -> dict | None:
    """The toolkit the CUDA kernels are built with ({home, version, archs}), or None for a
    CPU-only build: VIMD_SKIP_CUDA_BUILD, a CPU build of torch, or a CUDA torch with no toolkit on
    this machine (said in one line). Points torch's cpp_extension at the toolkit found."""
    import torch

    if _truthy("VIMD_SKIP_CUDA_BUILD") or torch.version.cuda is None:
        return None
    found = find_cuda_home()
    if found is None:
        print(f"vimd build: torch {torch.__version__} is a CUDA build but no CUDA toolkit was found "
              "(CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda): building the CPU kernels only",
              file=sys.stderr)
        return None
    home, how = found
    nvcc = os.path.join(home, "bin", "nvcc")
    if not os.path.isfile(nvcc):
        _stop(f"no bin/nvcc in the CUDA toolkit {home} (from {how}); set CUDA_HOME, or {SKIP_HINT}")
    headers = [h for h in ("cuda_runtime_api.h", "cuda_bf16.h", "cuda_fp16.h")
               if not os.path.isfile(os.path.join(home, "include", h))]
    if headers:
        _stop(f"the CUDA toolkit {home} (from {how}) lacks {', '.join(headers)} in include/; "
              f"set CUDA_HOME to a complete toolkit, or {SKIP_HINT}")
    version = _nvcc_version(nvcc)
    if version.split(".")[0] != torch.version.cuda.split(".")[0]:
        _stop(f"the CUDA toolkit {home} is {version}, torch {torch.__version__} was built with CUDA "
              f"{torch.version.cuda}: the major versions must match; set CUDA_HOME to a "
              f"{torch.version.cuda.split('.')[0]}.x toolkit, or {SKIP_HINT}")
    os.environ["CUDA_HOME"] = home
    from torch.utils import cpp_extension  # (its import guesses CUDA_HOME from the environment)
    cpp_extension.CUDA_HOME = home  # read by CUDAExtension and BuildExtension at call time
    return {"home": home, "version": version, "archs": cuda_archs(nvcc)}


def cuda_extension_kwargs(archs: list[str]) -> dict:
    """nvcc flags: explicit -gencode per arch plus PTX for the newest, so the build stays small."""
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    # --threads: nvcc compiles the -gencode targets of one file in parallel (few files, 2-3 archs).
    # -warn-spills: ptxas warns "Registers are spilled to local memory in function ..." (a kernel
    # that spills in a user's build, e.g. for an arch CI does not check, says so in the build log).
    nvcc = ["-O3", "--use_fast_math", "--expt-relaxed-constexpr", "-lineinfo",
            "--threads", "4", "-Xptxas=-warn-spills",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", *gencode]
    return {"sources": sorted(glob.glob("csrc/cuda/*.cu")) + ["csrc/cuda/ops.cpp"], "nvcc": nvcc}


def _compiler_version() -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return cxx
    return out.splitlines()[0].strip() if out else cxx


def build_record(toolkit: dict | None) -> dict:
    """What the extension is built against, written beside it as _build.json (read by
    ``python -m vimd_kernels.env`` and, when the extension fails to load, by its error message)."""
    import torch

    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_toolkit": toolkit and toolkit["version"], "cuda_home": toolkit and toolkit["home"],
            "cuda_archs": toolkit and [int(a) for a in toolkit["archs"]],
            "cxx": _compiler_version(), "python": platform.python_version()}


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
BUILD_RECORD = "_build.json"  # beside the extension: what it was built against


def extensions(toolkit: dict | None):
    import torch  # noqa: F401  (build requirement)
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cxx = ["-O3", "-fopenmp", "-g0"]  # -g0: no debug info (build time, .so size)
    include_dirs = [os.path.join(ROOT, "csrc")]
    macros = [(f"VIMD_ISA_{isa.upper()}", "1") for isa in _cpu_isas() if isa != "default"]
    if toolkit is not None:
        kw = cuda_extension_kwargs(toolkit["archs"])
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


def cmdclass(toolkit: dict | None):
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension):
        """BuildExtension that builds the ops library (CPU_KERNELS compiled once per ISA, with that
        ISA's flags; no libtorch_python, so no Python at load time) and links the bindings to it.

        Each ISA's build gets its own output folder (its own ninja file), so they compile in
        parallel (MAX_JOBS at a time); the remaining sources then build and link as usual. What the
        build was made against is written beside the modules (BUILD_RECORD).
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

        def run(self):
            super().run()  # builds into build/, then copies into the source tree for editable installs
            out_dir = os.path.dirname(self.get_ext_fullpath(OPS_EXT))  # where the modules now are
            with open(os.path.join(out_dir, BUILD_RECORD), "w") as f:
                json.dump(build_record(toolkit), f, indent=1)

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


if __name__ == "__main__":  # run by pip / setuptools' build backend (tests import the functions)
    toolkit = cuda_toolkit()
    setup(ext_modules=extensions(toolkit), cmdclass=cmdclass(toolkit))
