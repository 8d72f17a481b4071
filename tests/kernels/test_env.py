"""`python -m vimd_kernels.env` runs and reports versions and every backend."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

from vimd_kernels import registry
from vimd_kernels.registry import BACKENDS


def test_env_report_runs():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "vimd_kernels.env"], capture_output=True, text=True,
                         env=env, cwd=root, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert torch.__version__ in out and "python" in out and "cpu capability" in out
    for name, b in BACKENDS.items():
        assert f"backend {name}" in out
        if not b.available():
            assert b.install_hint in out  # missing backends say how to install them
    rec = registry.build_record()
    if rec is not None:  # what the extension was built against, and no warning when it matches
        assert re.search(rf"^built with +torch {re.escape(rec['torch'])};", out, re.M)
        assert ("WARNING" in out) == (rec["torch"] != torch.__version__)


def test_an_extension_built_for_another_torch_is_named_not_silently_dropped(tmp_path):
    """A built extension that fails to load (here: not a shared object, recorded as built for another
    torch) warns once at import, and the cpu backend's hint and the env report say to rebuild."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pkg = tmp_path / "vimd_kernels"
    shutil.copytree(os.path.join(root, "vimd_kernels"), pkg,
                    ignore=shutil.ignore_patterns("*.so", "_build.json", "__pycache__"))
    (pkg / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))).write_bytes(b"not a shared object")
    (pkg / "_build.json").write_text(json.dumps({"torch": "2.0.0+old", "torch_cuda": None, "cuda_toolkit": None,
                                                "cuda_home": None, "cuda_archs": None, "cxx": "g++",
                                                "python": "3.11"}))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    code = ("import torch, vimd_kernels\n"
            "from vimd_kernels import registry\n"
            "print(registry.resolve(None, torch.device('cpu')))\n"
            "print(registry.BACKENDS['cpu'].install_hint)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    said = f"the extension was built for torch 2.0.0+old and this is torch {torch.__version__}: rebuild it"
    assert "RuntimeWarning: vimd_kernels: the compiled kernels are unavailable: " + said in res.stderr
    assert res.stdout.splitlines()[0] == "ref"  # the pure-PyTorch fallback, no longer silent
    assert said in res.stdout.splitlines()[1]
    res = subprocess.run([sys.executable, "-m", "vimd_kernels.env"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^built with +torch 2\.0\.0\+old; no CUDA kernels;", res.stdout, re.M)
    assert "  WARNING" in res.stdout and said in res.stdout


def test_cuda_hint_tells_unbuilt_from_no_device(monkeypatch):
    """An extension built with the CUDA kernels on a machine without a GPU is not told to rebuild."""

    class Ext:  # stand-ins for the extension module, with and without the CUDA kernels
        with_cuda = False

    built = Ext()
    built.with_cuda = True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(registry, "_EXT", built)
    assert not BACKENDS["cuda"].available()
    assert "no CUDA device" in BACKENDS["cuda"].install_hint
    monkeypatch.setattr(registry, "_EXT", Ext())
    assert "build with a CUDA toolkit" in BACKENDS["cuda"].install_hint
    monkeypatch.setattr(registry, "_EXT", None)
    assert "build with a CUDA toolkit" in BACKENDS["cuda"].install_hint


def test_triton_interpreter_problem_makes_the_backend_unavailable_with_the_reason(monkeypatch):
    # e.g. triton <= 3.6's interpreter under NumPy 2.4 (triton-lang/triton#9171)
    monkeypatch.setattr(registry, "_HAS_TRITON", True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(registry, "_INTERP_PROBLEM", "triton 3.6's interpreter cannot run a loop")
    assert "triton" not in registry.available_backends()
    with pytest.raises(RuntimeError, match="backend 'triton' is not available here: triton 3.6's interpreter"):
        registry.resolve("triton", torch.device("cpu"))
    monkeypatch.setattr(registry, "_INTERP_PROBLEM", None)
    assert registry.BACKENDS["triton"].available()


@pytest.mark.interpret
def test_triton_interpreter_runs_a_loop_with_a_runtime_bound():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    from vimd_kernels.triton_utils import interpreter_problem
    assert interpreter_problem() is None


def test_triton_interpreter_probe_reports_a_failing_or_miscounting_launch(monkeypatch):
    pytest.importorskip("triton")
    from vimd_kernels import triton_utils

    class Kernel:  # stands in for the jitted probe: kernel[grid](out, n)
        def __init__(self, launch):
            self.launch = launch

        def __getitem__(self, grid):
            return self.launch

    def raising(out, n):
        raise TypeError("only 0-dimensional arrays can be converted to Python scalars")

    monkeypatch.setattr(triton_utils, "_index_probe_kernel", Kernel(raising))
    msg = triton_utils.interpreter_problem()
    assert msg is not None and "only 0-dimensional arrays" in msg and "numpy<2.4" in msg

    def miscounting(out, n):
        out.fill_(n - 1)

    monkeypatch.setattr(triton_utils, "_index_probe_kernel", Kernel(miscounting))
    assert triton_utils.interpreter_problem().endswith("counted 2 loop steps, not 3")
