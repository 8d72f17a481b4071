"""Race check of the CUDA kernels without a GPU: the emulator tests of test_cuda.py rerun with the
emulator built under ThreadSanitizer (every CUDA thread is a host thread; __syncthreads and
__syncwarp are real barriers, so TSan sees exactly the ordering the kernels ask of a GPU).
A shared-memory read or write that no barrier orders against another thread's write is a data
race on a GPU too (compute-sanitizer's racecheck would report it); there, it gives wrong results
only on some runs, so matching the reference once does not rule it out.

Two sets: RACE_CASES (one case of every kernel, phase and layout; CI) and every emulator test
(``slow``)."""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

from .test_cuda import EMU_SANITIZE_ENV, _cuda_include

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
T = "tests/kernels/test_cuda.py::"

# One case per kernel, phase and layout (about 6.5 minutes): forward single pass and chunked (summary,
# carry combine, main pass), state groups cycled through shared memory, backward tiles in parallel
# (summary + combine) and the row walk, odd L through the staging buffers, grouped B/C sums, both
# directions in one launch, conv forward/backward (both directions, channel slices), the mixer op,
# the inference steps.
# The slow test below adds the rest (multi-slab blocks and 300-row segments among them).
RACE_CASES = [
    T + "test_emulated_scan_kernels_match_reference[b2d8L300N4-BvarCvar-Dzdsi--float32]",
    T + "test_emulated_scan_kernels_match_reference[b2d8L64N4-Bg4Cvar-Dzds-r-bfloat16]",
    T + "test_emulated_forward_layouts_match_reference[b1d4L21N40-BconstCg2-Dzdsir-float32]",
    T + "test_emulated_backward_row_walk_matches_reference[b2d8L299N4-Bg2Cvar-Dzdsir-float32]",
    T + "test_emulated_bi_scan_matches_reference_per_direction[b1d4L300N3-BvarCvar-Dzds---float32]",
    T + "test_emulated_conv_kernels_match_reference[True-4]",
    T + "test_emulated_conv_channel_slice[8-False-530]",
    T + "test_emulated_bi_conv_matches_reference_per_direction[4-True-dtype0]",
    T + "test_emulated_mixer_op_on_cuda_backend[True]",
    T + "test_emulated_state_update[b3d5L6N40-BvarCvar-Dzdsi--float32-state_float32]",
    T + "test_emulated_conv_update[b2d5T7W4S5-bsc-float32]",
]


# On a GPU, `STAGES=sanitize bash tools/gpu/gpu_check.sh` runs these `cuda` tests under
# compute-sanitizer's memcheck (out-of-bounds and misaligned global accesses, which the emulator's
# x86 host tolerates), racecheck (shared-memory hazards on the hardware) and synccheck: one small
# case of every kernel and phase (grouped B/C, the three-phase long-L path, state groups with the
# shared-memory opt-in, both directions in one launch, conv channel slices, the mixer op).
GPU_SANITIZE_CASES = [
    T + "test_scan_matches_reference[b3d12L300N16-Bg4Cg4-Dzds---float32]",
    T + "test_scan_matches_reference[b1d120L4096N16-Bg4Cg4-Dzdsir-float32]",
    T + "test_scan_matches_reference[b1d24L500N40-BconstCg2-Dzdsir-float32]",
    T + "test_bi_scan_matches_reference_per_direction[b2d24L197N16-BvarCvar-Dzds---float32]",
    T + "test_conv_matches_reference[2-16-197-7-True-False-True-dtype20]",
    T + "test_conv_channel_slice[8-True-730-192]",
    T + "test_bi_conv_matches_reference_per_direction[4-True-dtype0]",
    T + "test_mixer_paths_match_reference[197-True]",
    T + "test_state_update_cuda[b3d130L4N64-BvarCvar-Dzdsi--float16-state_float32]",
    T + "test_conv_update_cuda[b8d384T5W4S63-bsc-float32]",
]


def _test_cuda_ids() -> list[str]:
    """Every test id of test_cuda.py (any marker)."""
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "", T.rstrip(":")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300).stdout.split()


def test_gpu_sanitize_cases_exist():
    ids = set(_test_cuda_ids())
    assert [c for c in GPU_SANITIZE_CASES + RACE_CASES if c not in ids] == []


def _tsan_runtime() -> str | None:
    try:
        path = subprocess.run(["gcc", "-print-file-name=libtsan.so"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


def _race_check(tests: list[str], tmp_path, timeout: int) -> None:
    runtime = _tsan_runtime()
    if runtime is None:
        pytest.skip("no ThreadSanitizer runtime (gcc -print-file-name=libtsan.so)")
    if _cuda_include() is None:
        pytest.skip("CUDA toolkit headers (cuda_fp16.h) not found: cannot build the kernel emulator")
    log = tmp_path / "tsan"
    env = dict(os.environ, LD_PRELOAD=runtime, OMP_NUM_THREADS="1", **{EMU_SANITIZE_ENV: "thread"},
               TSAN_OPTIONS=f"halt_on_error=0 exitcode=66 report_signal_unsafe=0 log_path={log}")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "",
                          "--basetemp", str(tmp_path / "pytest"), *tests],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    reports = sorted(glob.glob(f"{log}.*"))
    if reports:
        text = open(reports[0]).read()
        sites = sorted(set(re.findall(r"SUMMARY: ThreadSanitizer: .*", "".join(open(r).read() for r in reports))))
        pytest.fail(f"ThreadSanitizer reported {len(sites)} race site(s):\n" + "\n".join(sites)
                    + "\n\nfirst report:\n" + "\n".join(text.splitlines()[:40]))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # every selected test ran (a renamed case would otherwise drop out unnoticed)
    assert re.search(rf"\b{len(tests)} passed\b", res.stdout), res.stdout[-2000:]


# The checkers themselves, on probe kernels. Races: what a GPU orders (a block barrier, a warp
# barrier, a half-warp barrier within its half) passes; what it does not (no barrier between
# warps, a shuffle in place of __syncwarp, a half-warp barrier read across halves) is reported.
# Barriers: threads that exited do not wait (as on a GPU), but live threads waiting at two
# different __syncthreads fail the launch.
PROBE = r"""
#include "cuda/emu/simt_host.h"
#include <cstdio>
#include <cstdlib>
float out[64];
__global__ void probe(int mode) {
  __shared__ float s[64];
  const int t = threadIdx.x, l = t % 32;
  if (mode >= 6) {
    if (t >= 32) {
      if (mode == 7) __syncthreads();                               // not the others' barrier
      return;
    }
    __syncthreads();
    return;
  }
  s[t] = float(t);
  int src = t ^ 1;                                                  // a neighbour in the same warp
  if (mode == 0) { __syncthreads(); src = (t + 32) % 64; }          // other warp, block barrier
  if (mode == 1) { src = (t + 32) % 64; }                           // other warp, no barrier
  if (mode == 2) { __syncwarp(); }
  if (mode == 3) { (void)__shfl_xor_sync(0xffffffffu, 1.f, 1); }    // a shuffle is not a fence
  if (mode == 4) { __syncwarp(l < 16 ? 0x0000ffffu : 0xffff0000u); }                 // own half
  if (mode == 5) { __syncwarp(l < 16 ? 0x0000ffffu : 0xffff0000u); src = t ^ 16; }   // other half
  out[t] = s[src];
}
int main(int, char** argv) {
  const cudaError_t err = vimd_emu::launch(probe, dim3(2), dim3(64), 0, std::atoi(argv[1]));
  if (err != cudaSuccess) std::fprintf(stderr, "launch failed: %s\n", cudaGetErrorString(err));
  return err == cudaSuccess ? 0 : 3;
}
"""


def test_checkers_report_what_a_gpu_does_not_allow(tmp_path):
    runtime = _tsan_runtime()
    if runtime is None or _cuda_include() is None:
        pytest.skip("needs the ThreadSanitizer runtime and the CUDA toolkit headers")
    src = tmp_path / "probe.cpp"
    src.write_text(PROBE)
    exe = tmp_path / "probe"
    subprocess.run(["g++", "-std=c++20", "-O1", "-g", "-fsanitize=thread", f"-I{ROOT}/csrc",
                    f"-I{_cuda_include()}", str(src), "-o", str(exe)], check=True, capture_output=True, timeout=300)
    raced, failed = {}, {}
    for mode in range(8):
        res = subprocess.run([str(exe), str(mode)], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, TSAN_OPTIONS="exitcode=66"))
        raced[mode] = "WARNING: ThreadSanitizer: data race" in res.stderr
        failed[mode] = "launch failed: divergent __syncthreads" in res.stderr
        assert res.returncode == (66 if raced[mode] else 3 if failed[mode] else 0), res.stderr[-2000:]
    assert raced == {0: False, 1: True, 2: False, 3: True, 4: False, 5: True, 6: False, 7: False}
    assert failed == {m: m == 7 for m in range(8)}


def test_emulated_kernels_are_race_free(tmp_path):
    _race_check(RACE_CASES, tmp_path, timeout=1500)


@pytest.mark.slow
def test_every_emulated_test_is_race_free(tmp_path):
    tests = [i for i in _test_cuda_ids() if i.startswith(T + "test_emulated_")]
    assert len(tests) > len(RACE_CASES)
    _race_check(tests, tmp_path, timeout=6 * 3600)
