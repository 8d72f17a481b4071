"""What the sdist and the wheel hold.

The sdist must carry everything the extension builds from (csrc: C++ sources and headers, every
CUDA source) and the packaged configs; the wheel only the two packages (their benchmark modules
included), their configs and py.typed markers. By default the sdist is built here (`python -m build --sdist`, seconds) and the
wheel's Python part is laid out by `setup.py build_py` (no compile); scripts/check_package.sh
passes the real files it built through VIMD_SDIST / VIMD_WHEEL.
"""
import glob
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, VIMD_SKIP_CUDA_BUILD="TRUE")


def _run(args, cwd=ROOT):
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def sdist_files(tmp_path_factory) -> set[str]:
    path = os.environ.get("VIMD_SDIST")
    if not path:
        out = tmp_path_factory.mktemp("sdist")
        _run(["-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), "."])
        (path,) = glob.glob(str(out / "*.tar.gz"))
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    top = names[0].split("/", 1)[0]
    return {n.split("/", 1)[1] for n in names if n.startswith(top + "/")}


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    path = os.environ.get("VIMD_WHEEL")
    if path:
        with zipfile.ZipFile(path) as z:
            return set(z.namelist())
    out = tmp_path_factory.mktemp("build_py")
    _run(["setup.py", "-q", "build_py", "--build-lib", str(out / "lib")])
    lib = out / "lib"
    return {os.path.relpath(os.path.join(d, f), lib).replace(os.sep, "/")
            for d, _, files in os.walk(lib) for f in files}


# The benchmarks ship with the packages (`vimd bench kernels|models`).
BENCH_MODULES = {f"vimd_kernels/bench/{m}.py" for m in ("__init__", "common", "shapes", "kernels", "mixer_memory")} \
    | {"vimd_models/bench.py"}


def _repo_files(folder: str, suffixes: tuple[str, ...]) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
            for d, _, files in os.walk(os.path.join(ROOT, folder)) for f in files if f.endswith(suffixes)}


def test_sdist_has_every_source_the_build_needs(sdist_files):
    sources = _repo_files("csrc", (".h", ".cpp", ".cu", ".cuh"))
    assert {"csrc/cpu/ops.h", "csrc/cpu/kernels.h", "csrc/cuda/common.cuh", "csrc/cuda/selective_scan_fwd.cu",
            "csrc/bindings.cpp"} <= sources
    assert sources <= sdist_files, sorted(sources - sdist_files)
    configs = _repo_files("vimd_models/configs", (".yaml",))
    assert len(configs) > 20 and configs <= sdist_files, sorted(configs - sdist_files)
    for f in ("README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "setup.py", "MANIFEST.in",
              "vimd_models/py.typed", "vimd_kernels/py.typed", "vimd_models/configs/__init__.py"):
        assert f in sdist_files, f
    assert BENCH_MODULES <= sdist_files, sorted(BENCH_MODULES - sdist_files)


def test_sdist_leaves_out_repository_only_files(sdist_files):
    for f in sdist_files:
        assert not f.startswith(("benchmarks/", "tools/", "tests/", "scripts/", ".ci/", "configs/")), f
        assert not f.endswith((".so", ".o", ".pyc", "_build.json")), f  # a local build's outputs


def test_wheel_holds_the_two_packages_with_configs(wheel_files):
    tops = {f.split("/", 1)[0] for f in wheel_files if not f.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"vimd_kernels", "vimd_models"}, tops
    configs = {f"vimd_models/configs/{os.path.basename(f)}" for f in _repo_files("vimd_models/configs", (".yaml",))}
    assert configs <= wheel_files, sorted(configs - wheel_files)
    assert {"vimd_models/py.typed", "vimd_kernels/py.typed", "vimd_models/configs/__init__.py"} <= wheel_files
    assert BENCH_MODULES <= wheel_files, sorted(BENCH_MODULES - wheel_files)
    if any(f.endswith(".dist-info/METADATA") for f in wheel_files):  # a real wheel
        assert any(f.endswith(".dist-info/licenses/LICENSE") for f in wheel_files)
        assert any(f.startswith("vimd_kernels/_C") and f.endswith(".so") for f in wheel_files)
        assert "vimd_kernels/libvimd_ops.so" in wheel_files  # the ops library the bindings link


def test_a_built_wheel_records_what_its_extension_was_built_against(wheel_files):
    if not os.environ.get("VIMD_WHEEL"):
        pytest.skip("the wheel's Python part only (scripts/check_package.sh passes a built wheel)")
    assert {"vimd_kernels/_build.json", "vimd_kernels/libvimd_ops.so"} <= wheel_files
