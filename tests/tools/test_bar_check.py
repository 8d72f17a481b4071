"""The one-call GPU check's preparation, without a GPU: tools/gpu/build_peers.sh (steps, the patch
of the peers' sources and its refusal of sources it does not know), tools/gpu/bar_check.sh (the
carried size against its limit, the arguments) and the dry run's stop at the first GPU step."""
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

from tools.gpu.runs import ROOT

GPU_TOOLS = os.path.join(ROOT, "tools", "gpu")


def _repo_with(tmp_path, *scripts):
    """A folder laid out like the repository with copies of tools/gpu/SCRIPTS (they cd to its root)."""
    repo = tmp_path / "repo"
    (repo / "tools" / "gpu").mkdir(parents=True)
    for s in scripts:
        shutil.copy(os.path.join(GPU_TOOLS, s), repo / "tools" / "gpu" / s)
    return repo


def _bash(repo, script, *args, **env):
    return subprocess.run(["bash", f"tools/gpu/{script}", *args], cwd=repo, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


# --------------------------------------------------------------------------- build_peers.sh

def test_build_peers_check_lists_steps_and_pins(tmp_path):
    r = _bash(ROOT, "build_peers.sh", "--check")
    assert r.returncode == 0, r.stderr
    assert "steps: venv download patch build pack" in r.stdout
    assert "mamba_ssm-2.3.2.post1 causal_conv1d-1.7.0; sm_90; float32 and bfloat16" in r.stdout


def test_build_peers_names_an_unknown_step(tmp_path):
    repo = _repo_with(tmp_path, "build_peers.sh")
    r = _bash(repo, "build_peers.sh", "patch", "compile")
    assert r.returncode == 2 and "unknown step 'compile' (steps: venv download patch build pack)" in r.stderr


def test_build_peers_later_steps_name_the_missing_earlier_one(tmp_path):
    repo = _repo_with(tmp_path, "build_peers.sh")
    r = _bash(repo, "build_peers.sh", "patch", PY=sys.executable)
    assert r.returncode == 2 and "(run the download step)" in r.stderr
    r = _bash(repo, "build_peers.sh", "pack", PY=sys.executable)
    assert r.returncode == 2 and "(run the build step)" in r.stderr


# The lines of the released sources that the patch step edits (mamba_ssm 2.3.2.post1, causal_conv1d
# 1.7.0), reduced to what the patterns see: the test builds stand-in archives from them.
_SETUP = '''if not SKIP_CUDA_BUILD:
    cc_flag = []
    if True:
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_75,code=sm_75")
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_121,code=sm_121")

    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI is set to be the same as
    extra_compile_args = {
        "nvcc": [
                    "-O3",
                    "--ptxas-options=-v",
                    "-lineinfo",
                ]
                + cc_flag
    }
    sources = [
%s    ]
'''
_DISPATCH = '''#define DISPATCH_%(T)sTYPE_FLOAT_AND_HALF_AND_BF16(%(T)sTYPE, NAME, ...)    \\
    if (%(T)sTYPE == at::ScalarType::Half) {                                 \\
        using x_t = at::Half;                                               \\
        __VA_ARGS__();                                                      \\
    } else if (%(T)sTYPE == at::ScalarType::BFloat16) {                     \\
        using x_t = at::BFloat16;                                           \\
        __VA_ARGS__();                                                      \\
    } else if (%(T)sTYPE == at::ScalarType::Float)  {                       \\
        using x_t = float;                                                  \\
        __VA_ARGS__();                                                      \\
    }
'''
_TYPES = ("float", "at::Half", "at::BFloat16")


def _instantiations(fn: str, kernels=("", "channellast_")) -> str:
    return "".join(f"template void causal_conv1d_{k}{fn}_cuda<{i}, {w}>(P &params, cudaStream_t stream);\n"
                   for k in kernels for w in _TYPES for i in _TYPES)


def _stand_in_sdists(cache, mamba_units):
    dispatch = _DISPATCH % {"T": "I"} + _DISPATCH % {"T": "W"}
    trees = {
        "mamba_ssm-2.3.2.post1": {
            "setup.py": _SETUP % "".join(f'                "csrc/selective_scan/selective_scan_{u}.cu",\n'
                                         for u in mamba_units),
            "csrc/selective_scan/selective_scan.cpp": dispatch},
        "causal_conv1d-1.7.0": {
            "setup.py": _SETUP % '                "csrc/causal_conv1d_fwd.cu",\n',
            "csrc/causal_conv1d.cpp": dispatch,
            "csrc/causal_conv1d_fwd.cu": _instantiations("fwd"),
            "csrc/causal_conv1d_bwd.cu": _instantiations("bwd"),
            "csrc/causal_conv1d_update.cu": _instantiations("update", ("",))}}
    (cache / "sdist").mkdir(parents=True)
    for name, files in trees.items():
        src = cache / "stage" / name
        for rel, text in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_text(text)
        with tarfile.open(cache / "sdist" / f"{name}.tar.gz", "w:gz") as t:
            t.add(src, arcname=name)


_MAMBA_UNITS = ["fwd_fp32", "fwd_fp16", "fwd_bf16", "bwd_fp32_real", "bwd_fp32_complex", "bwd_fp16_real",
                "bwd_fp16_complex", "bwd_bf16_real", "bwd_bf16_complex"]


def test_build_peers_patch_keeps_one_arch_and_float32_bfloat16(tmp_path):
    repo = _repo_with(tmp_path, "build_peers.sh")
    cache = repo / ".gpu_cache" / "peers"
    _stand_in_sdists(cache, _MAMBA_UNITS)
    r = _bash(repo, "build_peers.sh", "patch", PY=sys.executable, ARCH="90")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "patched mamba_ssm-2.3.2.post1 and causal_conv1d-1.7.0: sm_90, float32/bfloat16" in r.stdout
    src = cache / "src"
    for peer in ("mamba_ssm-2.3.2.post1", "causal_conv1d-1.7.0"):
        setup = (src / peer / "setup.py").read_text()
        assert 'cc_flag = ["-gencode", "arch=compute_90,code=sm_90"]' in setup
        assert "-lineinfo" not in setup and "ptxas-options" not in setup
        # the patched setup.py still runs: its final flag list is the one pair
        scope = {"SKIP_CUDA_BUILD": False}
        exec(compile(setup, "setup.py", "exec"), scope)
        assert scope["cc_flag"] == ["-gencode", "arch=compute_90,code=sm_90"]
        assert scope["extra_compile_args"]["nvcc"] == ["-O3", "-gencode", "arch=compute_90,code=sm_90"]
    mamba_setup = (src / "mamba_ssm-2.3.2.post1" / "setup.py").read_text()
    assert "fp16" not in mamba_setup and mamba_setup.count("selective_scan_") == 6
    for cpp in (src / "mamba_ssm-2.3.2.post1/csrc/selective_scan/selective_scan.cpp",
                src / "causal_conv1d-1.7.0/csrc/causal_conv1d.cpp"):
        text = cpp.read_text()
        assert "at::Half" not in text and text.count("ScalarType::BFloat16") == 2 and text.count("ScalarType::Float") == 2
    for unit, kept in (("fwd", 8), ("bwd", 8), ("update", 4)):
        text = (src / f"causal_conv1d-1.7.0/csrc/causal_conv1d_{unit}.cu").read_text()
        assert "at::Half" not in text and text.count("template void") == kept, text


def test_build_peers_patch_stops_on_sources_it_does_not_know(tmp_path):
    """A release whose files differ from the expected text stops the script, naming file and pattern."""
    repo = _repo_with(tmp_path, "build_peers.sh")
    _stand_in_sdists(repo / ".gpu_cache" / "peers", [u for u in _MAMBA_UNITS if u != "bwd_fp16_complex"])
    r = _bash(repo, "build_peers.sh", "patch", PY=sys.executable)
    assert r.returncode != 0
    assert "mamba_ssm-2.3.2.post1/setup.py" in r.stderr and "matched 2 times, expected 3" in r.stderr


# --------------------------------------------------------------------------- bar_check.sh

def test_bar_check_size_against_the_carry_limit(tmp_path):
    repo = _repo_with(tmp_path, "bar_check.sh")
    (repo / ".carry" / "peers").mkdir(parents=True)
    (repo / ".carry" / "peers" / "peers.tar.xz").write_bytes(b"\0" * (3 << 20))
    (repo / ".carry" / "ours").mkdir()
    (repo / ".carry" / "ours" / "arch").write_text("90\n")
    r = _bash(repo, "bar_check.sh", "size", CARRY_MAX_MIB="4")
    assert r.returncode == 0, r.stderr
    assert f"{(3 << 20) + 3:10d}  total (3.0 MiB; at most 4 MiB)" in r.stdout
    assert ".carry/peers/peers.tar.xz" in r.stdout and ".carry/ours/arch" in r.stdout
    r = _bash(repo, "bar_check.sh", "size", CARRY_MAX_MIB="2")
    assert r.returncode == 2 and ".carry is over 2 MiB" in r.stderr


def test_bar_check_names_its_commands(tmp_path):
    r = _bash(_repo_with(tmp_path, "bar_check.sh"), "bar_check.sh", "go")
    assert r.returncode == 2 and "usage: bash tools/gpu/bar_check.sh [run | prepare | size | plan]" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop where no GPU is visible")
def test_dry_run_stops_at_the_first_gpu_step_and_names_what_is_missing(tmp_path):
    """Without a GPU the one-call check unpacks and checks what was carried, then stops before the
    tests with rc 3 (rc 4: a carried piece is missing), naming the steps that need a GPU; it compiles
    nothing and runs no test. (REHEARSE=0: the CPU rehearsal of the model stages is tested in
    test_model_check.py.)"""
    out, carry = tmp_path / "out", tmp_path / "carry"
    (carry / "peers").mkdir(parents=True)
    (carry / "peers" / "peers-sm80.cpython-399-x86_64-linux-gnu.tar.xz").write_bytes(b"")   # another GPU, Python
    env = {**os.environ, "OUT": str(out), "PY": sys.executable, "CARRY": str(carry), "REHEARSE": "0"}
    r = subprocess.run(["bash", "tools/gpu/bar_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    summary = (out / "summary.txt").read_text()
    assert r.returncode == 4, r.stdout[-3000:] + r.stderr[-3000:]
    assert "before the steps that need a GPU (test bench train model-step deploy versions)" in summary
    assert "sees no CUDA device" in summary and "model stages: yaml PIL matplotlib safetensors tqdm numpy import" in summary
    assert "build: no prebuilt extension in" in summary
    assert "peers: carried peers-sm80.cpython-399-x86_64-linux-gnu.tar.xz left out: not" in summary
    assert "versions: nothing in" in summary and "preflight: failed: peers build versions" in summary
    assert "bench: job list: # 78 jobs on cuda" in summary        # the bar cells without the slow peers
    assert not (out / "pytest_cuda.log").exists() and not (out / "build.log").exists()
    assert "FAILED: preflight" in summary and not (out / "train.log").exists()   # the stage table, no rehearsal


def test_build_peers_pack_strips_and_packs_both_with_a_manifest(tmp_path):
    """The pack step: both extension modules stripped of host debug info beside their Python
    packages in one tar.xz named for the architecture and the Python, with a PEERS manifest."""
    import sysconfig
    repo = _repo_with(tmp_path, "build_peers.sh")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    (tmp_path / "m.c").write_text("int peer_answer(void) { return 42; }\n")
    for peer, module in (("mamba_ssm-2.3.2.post1", "selective_scan_cuda"), ("causal_conv1d-1.7.0", "causal_conv1d_cuda")):
        src = repo / ".gpu_cache" / "peers" / "src" / peer
        (src / peer.split("-")[0]).mkdir(parents=True)
        (src / peer.split("-")[0] / "__init__.py").write_text("")
        subprocess.run(["gcc", "-g", "-shared", "-fPIC", "-o", str(src / f"{module}{suffix}"), str(tmp_path / "m.c")],
                       check=True)
    r = _bash(repo, "build_peers.sh", "pack", PY=sys.executable, ARCH="90")
    assert r.returncode == 0, r.stdout + r.stderr
    pack = repo / ".carry" / "peers" / f"peers-sm90{suffix[:-3]}.tar.xz"
    assert f"packed {pack}" in r.stdout and "bytes stripped of host debug info" in r.stdout
    with tarfile.open(pack) as t:
        names = {os.path.normpath(n) for n in t.getnames()}
        manifest = t.extractfile("./PEERS").read().decode()
    assert {f"selective_scan_cuda{suffix}", f"causal_conv1d_cuda{suffix}", "mamba_ssm/__init__.py",
            "causal_conv1d/__init__.py", "PEERS"} <= names
    assert "mamba_ssm 2.3.2.post1\ncausal_conv1d 1.7.0\narch 90\n" in manifest and f"ext_suffix {suffix}" in manifest
    assert (repo / ".carry" / "peers" / "PEERS").read_text() == manifest
