"""`python -m vimd_kernels.env` runs and reports versions and every backend."""
import os
import subprocess
import sys

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
