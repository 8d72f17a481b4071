"""setup.py finds the CUDA toolkit the way users have it and stops with one line where it cannot
build: fake toolkits (an nvcc script answering as nvcc does) stand in for real ones."""
import importlib.util
import os
import stat

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def setup_py(monkeypatch):
    spec = importlib.util.spec_from_file_location("vimd_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines the functions; setup() runs only as __main__
    for var in ("CUDA_HOME", "CUDA_PATH", "VIMD_SKIP_CUDA_BUILD", "VIMD_CUDA_ARCHS"):
        monkeypatch.setenv(var, "")  # recorded, so what setup.py sets is undone after the test
        monkeypatch.delenv(var)
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # a CUDA build of torch, whatever is installed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(mod.os.path, "isfile", _no_usr_local_cuda(os.path.isfile))
    from torch.utils import cpp_extension
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)  # restored afterwards
    return mod


def _no_usr_local_cuda(isfile):
    return lambda p: False if str(p).startswith("/usr/local/cuda") else isfile(p)


def _script(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def fake_toolkit(root, version="13.0.88", headers=("cuda_runtime_api.h", "cuda_bf16.h", "cuda_fp16.h"),
                 archs=(75, 80, 86, 90, 100, 120)):
    """A toolkit folder whose bin/nvcc answers -v (TOP=), --version and --list-gpu-arch like nvcc."""
    major, minor = version.split(".")[:2]
    listing = "\\n".join(f"compute_{a}" for a in archs)
    _script(os.path.join(root, "bin", "nvcc"), f'''case "$*" in
  *--version*) printf 'Cuda compilation tools, release {major}.{minor}, V{version}\\n' ;;
  *--list-gpu-arch*) printf '{listing}\\n' ;;
  *-v*) printf '#$ _HERE_={root}/bin\\n#$ TOP={root}/bin/..\\n' >&2 ;;
esac
''')
    os.makedirs(os.path.join(root, "include"), exist_ok=True)
    for h in headers:
        open(os.path.join(root, "include", h), "w").close()
    return root


def wrapper_on_path(tmp_path, monkeypatch, toolkit):
    """nvcc on PATH as a wrapper script in a bin folder outside the toolkit (torch's own guess,
    the bin folder's parent, is then wrong)."""
    _script(str(tmp_path / "usrbin" / "nvcc"), f'exec {toolkit}/bin/nvcc "$@"\n')
    monkeypatch.setenv("PATH", str(tmp_path / "usrbin") + os.pathsep + "/usr/bin:/bin")


def test_the_toolkit_behind_a_wrapper_script_on_path(setup_py, tmp_path, monkeypatch):
    tk = fake_toolkit(str(tmp_path / "cuda-13.0"))
    wrapper_on_path(tmp_path, monkeypatch, tk)
    home, how = setup_py.find_cuda_home()
    assert home == os.path.realpath(tk) and "nvcc on PATH" in how
    got = setup_py.cuda_toolkit()
    assert got["home"] == os.path.realpath(tk) and got["version"] == "13.0.88"
    assert got["archs"] == ["80", "90"]  # no GPU visible: the default list
    from torch.utils import cpp_extension
    assert cpp_extension.CUDA_HOME == os.path.realpath(tk) == os.environ["CUDA_HOME"]


def test_the_toolkit_behind_a_symlink_on_path(setup_py, tmp_path, monkeypatch):
    tk = fake_toolkit(str(tmp_path / "cuda-13.0"))
    os.makedirs(tmp_path / "links")
    os.symlink(os.path.join(tk, "bin", "nvcc"), tmp_path / "links" / "nvcc")
    monkeypatch.setenv("PATH", str(tmp_path / "links") + os.pathsep + "/usr/bin:/bin")
    assert setup_py.find_cuda_home()[0] == os.path.realpath(tk)


@pytest.mark.parametrize("var", ["CUDA_HOME", "CUDA_PATH"])
def test_cuda_home_and_cuda_path_come_first(setup_py, tmp_path, monkeypatch, var):
    tk = fake_toolkit(str(tmp_path / "chosen"))
    wrapper_on_path(tmp_path, monkeypatch, fake_toolkit(str(tmp_path / "other")))
    monkeypatch.setenv(var, tk)
    assert setup_py.find_cuda_home() == (tk, f"${var}")


def test_no_toolkit_anywhere_builds_the_cpu_kernels_and_says_so(setup_py, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(setup_py.shutil, "which", lambda name: None)
    assert setup_py.cuda_toolkit() is None
    assert "no CUDA toolkit was found" in capsys.readouterr().err


def test_a_cpu_torch_or_the_skip_variable_builds_the_cpu_kernels(setup_py, tmp_path, monkeypatch):
    wrapper_on_path(tmp_path, monkeypatch, fake_toolkit(str(tmp_path / "tk")))
    monkeypatch.setenv("VIMD_SKIP_CUDA_BUILD", "TRUE")
    assert setup_py.cuda_toolkit() is None
    monkeypatch.delenv("VIMD_SKIP_CUDA_BUILD")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert setup_py.cuda_toolkit() is None


def _stop_line(setup_py):
    with pytest.raises(SystemExit) as e:
        setup_py.cuda_toolkit()
    msg = str(e.value.code)
    assert "\n" not in msg and msg.startswith("vimd build: ")
    return msg


def test_missing_headers_stop_the_build_in_one_line(setup_py, tmp_path, monkeypatch):
    tk = fake_toolkit(str(tmp_path / "tk"), headers=("cuda_runtime_api.h",))
    monkeypatch.setenv("CUDA_HOME", tk)
    msg = _stop_line(setup_py)
    assert "cuda_bf16.h" in msg and tk in msg and "VIMD_SKIP_CUDA_BUILD=TRUE" in msg


def test_another_cuda_major_version_stops_the_build_in_one_line(setup_py, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", fake_toolkit(str(tmp_path / "tk"), version="12.4.131"))
    msg = _stop_line(setup_py)
    assert "12.4.131" in msg and "CUDA 13.0" in msg and "VIMD_SKIP_CUDA_BUILD=TRUE" in msg


def test_a_toolkit_without_nvcc_stops_the_build(setup_py, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert "no bin/nvcc" in _stop_line(setup_py)


def test_architectures_from_the_variable_the_visible_gpus_or_the_default(setup_py, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", fake_toolkit(str(tmp_path / "tk")))
    monkeypatch.setenv("VIMD_CUDA_ARCHS", "9.0, sm_80;120")
    assert setup_py.cuda_toolkit()["archs"] == ["80", "90", "120"]
    monkeypatch.delenv("VIMD_CUDA_ARCHS")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (8, 6) if i else (9, 0))
    assert setup_py.cuda_toolkit()["archs"] == ["86", "90"]
    monkeypatch.setenv("VIMD_CUDA_ARCHS", "61")
    msg = _stop_line(setup_py)
    assert "sm_61" in msg and "VIMD_CUDA_ARCHS" in msg
    monkeypatch.setenv("VIMD_CUDA_ARCHS", "hopper")
    assert "VIMD_CUDA_ARCHS must list" in _stop_line(setup_py)


def test_the_gencode_flags_add_ptx_for_the_newest_and_no_standard_of_their_own(setup_py):
    nvcc = setup_py.cuda_extension_kwargs(["80", "90"])["nvcc"]
    assert "-gencode=arch=compute_90,code=compute_90" in nvcc
    assert not [f for f in nvcc if f.startswith("-std")]  # torch's cpp_extension adds its own
