"""Deployment without vimd's Python package: a ViM and a DVMSR exported with torch.export and
compiled with AOTInductor run in a fresh Python that only loads vimd_kernels/libvimd_ops.so
(vimd_kernels and vimd_models cannot be imported there), and match the eager model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import vimd_models as vm
from vimd_kernels.native import library_path
from vimd_kernels.registry import BACKENDS
from vimd_models.checkpoint import save_weights
from vimd_models.cli import main
from vimd_models.export import compile_package, custom_ops, export_model

pytestmark = pytest.mark.skipif(not BACKENDS["cpu"].available() or not os.path.exists(library_path()),
                                reason="needs the built extension (vimd_kernels/libvimd_ops.so)")

# The fresh interpreter: vimd's packages are blocked from import; it loads the package first
# without the ops library (which must fail: the graph calls vimd's C++ ops), then with it.
RUNNER = r"""
import importlib.abc, sys

class _NoVimd(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("vimd_kernels", "vimd_models"):
            raise ImportError(f"{name} imported in the deployment process")
        return None

sys.meta_path.insert(0, _NoVimd())
import torch

lib, package, x_path, out_path = sys.argv[1:5]
x = torch.load(x_path)
try:
    torch._inductor.aoti_load_package(package)(x)
except Exception as e:  # the vimd:: ops are not registered yet
    print("without the library:", type(e).__name__)
else:
    print("without the library: ran")
torch.ops.load_library(lib)
with torch.no_grad():
    out = torch._inductor.aoti_load_package(package)(x)
torch.save(out, out_path)
print("loaded:", sorted(m for m in sys.modules if m.startswith("vimd")))
"""

# The C++ ops an exported model on CPU tensors must hold (the mixers' conv and scan).
CPU_OPS = {"vimd::causal_conv1d_fwd_cpu", "vimd::selective_scan_fwd_cpu"}


def _run_without_vimd(package: str, x: torch.Tensor, tmp_path) -> tuple[torch.Tensor, str]:
    x_path, out_path = str(tmp_path / "x.pt"), str(tmp_path / "out.pt")
    torch.save(x, x_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", RUNNER, library_path(), package, x_path, out_path],
                         cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return torch.load(out_path), res.stdout


def _check_deployed(model: torch.nn.Module, x: torch.Tensor, tmp_path, package: str | None = None):
    """The package (default: exported and compiled here) run without vimd matches the eager model."""
    model.eval()
    with torch.no_grad():
        want = model(x)
    if package is None:
        ep = export_model(model, x)
        assert CPU_OPS <= set(custom_ops(ep)), custom_ops(ep)
        assert not [op for op in custom_ops(ep) if not op.endswith(("_cpu", "_cuda"))]  # no Python ops
        package = compile_package(ep, tmp_path / "model.pt2")
    got, log = _run_without_vimd(package, x, tmp_path)
    assert "without the library: ran" not in log, log
    assert "loaded: []" in log, log
    torch.testing.assert_close(got, want)


@pytest.mark.graph_capture
def test_exported_program_holds_only_aten_and_the_cpu_ops():
    """torch.export inlines vimd's Python ops into the C++ ones; the exported program matches eager."""
    for name, x in (("vim_micro", torch.randn(2, 3, 32, 32)), ("dvmsr_micro", torch.rand(1, 3, 8, 8))):
        m = vm.create_model(name).eval()
        ep = export_model(m, x)
        assert CPU_OPS <= set(custom_ops(ep)) and all(op.endswith("_cpu") for op in custom_ops(ep)), name
        with torch.no_grad():
            torch.testing.assert_close(ep.module()(x), m(x))


class _DecodeStep(torch.nn.Module):
    """One decoding step of a mixer: the conv update, then the state update, on buffers that the
    step updates in place."""

    def __init__(self, batch=2, dim=4, N=3, width=4):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
        self.N = N
        self.weight, self.bias = torch.nn.Parameter(r(dim, width)), torch.nn.Parameter(r(dim))
        self.A = torch.nn.Parameter(-torch.rand(dim, N, generator=gen))
        self.D, self.dt_bias = torch.nn.Parameter(r(dim)), torch.nn.Parameter(r(dim))
        self.register_buffer("conv_state", r(batch, dim, width - 1))
        self.register_buffer("state", r(batch, dim, N))

    def forward(self, x):
        from vimd_kernels import causal_conv1d_update, selective_state_update
        xc = causal_conv1d_update(x, self.conv_state, self.weight, self.bias, "silu")
        return selective_state_update(self.state, xc, x, self.A, xc[:, :self.N], x[:, -self.N:], self.D,
                                      x, self.dt_bias, True)


@pytest.mark.graph_capture
def test_exported_decode_step_holds_the_cpu_update_ops():
    """A decoding step exports to the C++ update ops; the exported program's outputs and the states
    it updates match eager's, step after step."""
    eager, traced = _DecodeStep(), _DecodeStep()
    x = torch.randn(2, 4)
    ep = export_model(traced, x)
    assert set(custom_ops(ep)) == {"vimd::causal_conv1d_update_cpu", "vimd::selective_state_update_cpu"}
    run = ep.module()
    for _ in range(3):
        x = torch.randn(2, 4)
        with torch.no_grad():
            torch.testing.assert_close(run(x), eager(x))
    for k in ("conv_state", "state"):
        torch.testing.assert_close(run.get_buffer(k), eager.get_buffer(k), msg=lambda m: f"{k}: {m}")


@pytest.mark.graph_capture
def test_cli_export_runs_without_vimd(tmp_path, capsys):
    """The CI case: `vimd export` of a one-block DVMSR (the smallest graph with both C++ ops) for
    8x8 images, with saved weights; the package run without vimd matches the eager model."""
    model = vm.create_model("dvmsr_micro", depths=(1,))
    save_weights(str(tmp_path / "w.safetensors"), model.state_dict())
    package = str(tmp_path / "dvmsr.pt2")
    assert main(["export", "dvmsr_micro", "--input", "1,3,8,8", "--out", package,
                 "--weights", str(tmp_path / "w.safetensors"), "depths=[1]"]) == 0
    out = capsys.readouterr().out
    assert f"package: {package}" in out and "vimd::selective_scan_fwd_cpu" in out
    _check_deployed(model, torch.rand(1, 3, 8, 8), tmp_path, package=package)


@pytest.mark.parametrize("args,message", [
    (["--input", "1,3,8", "--out", "m.pt2"], "--input must be B,C,H,W"),
    (["--input", "1,3,8,x", "--out", "m.pt2"], "--input must be B,C,H,W (4 positive integers)"),
    (["--input", "1,0,8,8", "--out", "m.pt2"], "--input must be B,C,H,W (4 positive integers), got '1,0,8,8'"),
    (["--input", "1,3,8,8", "--out", "m.zip"], "--out must end in .pt2"),
    (["--input", "1,3,8,8", "--out", "m.pt2", "--device", "tpu"], "--device must be cpu or cuda"),
])
def test_cli_export_rejects_bad_arguments(args, message, capsys):
    assert main(["export", "dvmsr_micro", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_vim_tiny_shaped_runs_without_vimd(tmp_path):
    """ViM-Ti's width and state size (D=192, N=16, patch 16) at 64x64, two blocks."""
    m = vm.create_model("vim_tiny_patch16_224", img_size=64, depth=2, num_classes=10)
    _check_deployed(m, torch.randn(2, 3, 64, 64), tmp_path)


@pytest.mark.slow
def test_dvmsr_full_runs_without_vimd(tmp_path):
    """The NTIRE 2024 DVMSR (4 RSSBs x 2 ViMMs) on a 16x16 image."""
    _check_deployed(vm.create_model("dvmsr"), torch.rand(1, 3, 16, 16), tmp_path)


@pytest.mark.slow
def test_vim_tiny_real_size_runs_without_vimd(tmp_path):
    """ViM-Ti/16 at 224 (24 blocks, L = 197)."""
    _check_deployed(vm.create_model("vim_tiny_patch16_224"), torch.randn(1, 3, 224, 224), tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build docs/deploy/run_package.cpp")
def test_cpp_runner(tmp_path):
    """docs/deploy/run_package.cpp (AOTIModelPackageLoader, no Python) runs a ViM package."""
    torch_dir = os.path.dirname(torch.__file__)
    src = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "deploy", "run_package.cpp")
    exe = str(tmp_path / "run_package")
    subprocess.run(["g++", "-std=c++20", "-O1", "-w", src, f"-I{torch_dir}/include",
                    f"-I{torch_dir}/include/torch/csrc/api/include", f"-L{torch_dir}/lib",
                    f"-Wl,-rpath,{torch_dir}/lib", "-ltorch", "-ltorch_cpu", "-lc10", "-ldl", "-o", exe],
                   check=True, timeout=900)
    model = vm.create_model("vim_micro").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    package = compile_package(export_model(model, x), tmp_path / "vim.pt2")
    x.numpy().tofile(tmp_path / "x.f32")
    res = subprocess.run([exe, library_path(), package, str(tmp_path / "x.f32"), "2,3,32,32",
                          str(tmp_path / "out.f32")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    got = torch.from_numpy(np.fromfile(tmp_path / "out.f32", dtype=np.float32)).reshape(want.shape)
    torch.testing.assert_close(got, want)
