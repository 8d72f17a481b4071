"""The "cuda" backend (csrc/cuda through vimd_kernels._C) against the references.

Everything marked ``cuda`` needs a GPU and a CUDA build of the extension. The unmarked tests
check the backend's host-side logic (launch planning, argument rejection) on the CPU.
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch

from tests.kernels import test_update
from tests.kernels.helpers import ScanCase, leaves, reduction_scale, scan_grad_scale, scan_inputs
from tests.tolerances import assert_close
from vimd_kernels import ops
from vimd_kernels.causal_conv1d.reference import causal_conv1d_ref
from vimd_kernels.mamba_inner.reference import bimamba_v2_inner_ref, mamba_inner_ref
from vimd_kernels.selective_scan import cuda as scan_cuda
from vimd_kernels.causal_conv1d import cuda as conv_cuda
from vimd_kernels.selective_scan.reference import selective_scan_ref
from vimd_kernels.conv_update import cuda as conv_update_cuda
from vimd_kernels.state_update import cuda as state_update_cuda



@pytest.fixture(autouse=True)
def _exact_float32_references(monkeypatch):
    """The references' cuDNN convs and matmuls in true float32 (TF32 would be the larger error)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(precision)
SCAN_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


# ----------------------------------------------------------------------------- host logic (CPU)

def _fwd_time_estimate(batch, dim, L, sms, chunk):
    """The planner's cost model, written out independently: the busiest multiprocessor's blocks x
    (step blocks per chunk + a block's start; a lone block at LONE_BLOCK_EFF), + the summary pass
    and the combine when L is split."""
    n = math.ceil(L / chunk)
    blocks = batch * math.ceil(dim / scan_cuda.FWD_ROWS) * n
    per_sm = math.ceil(blocks / sms)
    main = (per_sm * (chunk // scan_cuda.FWD_STEPS + scan_cuda.BLOCK_START_COST)
            / (scan_cuda.LONE_BLOCK_EFF if per_sm == 1 else 1))
    return main if n == 1 else main * (1 + scan_cuda.SUMMARY_COST) + scan_cuda.CHUNK_COST * n


@pytest.mark.parametrize("batch,dim,L,sms", [(1, 120, 65536, 132), (128, 384, 197, 132),
                                             (32, 384, 730, 132), (1, 384, 730, 132), (2, 120, 4096, 108),
                                             (1, 1, 1, 1), (1, 8, 10 ** 8, 132), (3, 50, 5000, 16)])
def test_plan_chunk_len(batch, dim, L, sms):
    chunk = scan_cuda.plan_chunk_len(batch, dim, L, sms)
    assert chunk % scan_cuda.FWD_STEPS == 0 and chunk >= scan_cuda.FWD_STEPS
    n_chunks = math.ceil(L / chunk)
    assert n_chunks <= 65535
    blocks_per_step = math.ceil(L / scan_cuda.FWD_STEPS)
    if batch * math.ceil(dim / scan_cuda.FWD_ROWS) >= 2 * sms:
        assert n_chunks == 1  # two blocks on every multiprocessor: no second pass
    if blocks_per_step <= 4096:  # no split is estimated faster (brute force over every chunk length)
        best = min(_fwd_time_estimate(batch, dim, L, sms, k * scan_cuda.FWD_STEPS)
                   for k in range(1, blocks_per_step + 1))
        assert _fwd_time_estimate(batch, dim, L, sms, chunk) <= best + 1e-9


def test_plan_chunk_len_splits_only_where_multiprocessors_idle():
    # ViM stride 16 (batch 128): 384 blocks, about three on every multiprocessor: no split.
    assert scan_cuda.plan_chunk_len(128, 384, 197, 132) >= 197
    # ViM stride 8 (batch 32): 96 blocks of rows for 132 multiprocessors, one each at most. A
    # split runs every step's exp2 twice (summary and main pass) but gives every multiprocessor
    # about three blocks, where the cost model puts a lone block at about half the rate
    # (LONE_BLOCK_EFF): a few chunks, not many short ones.
    assert 2 <= math.ceil(730 / scan_cuda.plan_chunk_len(32, 384, 730, 132)) <= 8
    # DVMSR (120 rows: one block of them) is split over every multiprocessor, two blocks on most.
    chunk = scan_cuda.plan_chunk_len(1, 120, 65536, 132)
    assert math.ceil(65536 / chunk) > 1.5 * 132 and chunk >= 128


@pytest.mark.parametrize("dim,bg,cg", [(384, 1, 1), (384, 0, 0), (48, 4, 1), (48, 4, 6), (120, 0, 4),
                                       (10, 5, 2), (7, 7, 0)])
@pytest.mark.parametrize("batch,L", [(1, 65536), (128, 197), (2, 7)])
def test_plan_backward_segments_lie_in_groups(dim, bg, cg, batch, L):
    seg, slab = scan_cuda.plan_backward(batch, dim, L, bg, cg, 132)
    assert dim % seg == 0
    for G in (bg, cg):
        if G:
            assert (dim // G) % seg == 0  # a block's summed dB/dC belong to one group
    assert slab % scan_cuda.ROWS == 0 and slab >= scan_cuda.ROWS
    assert slab <= max(scan_cuda.ROWS, math.ceil(seg / scan_cuda.ROWS) * scan_cuda.ROWS)


def test_plan_backward_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        scan_cuda.plan_backward(1, 10, 5, 3, 0, 132)


def test_groups_of():
    assert scan_cuda.groups_of(torch.empty(4, 3)) == 0
    assert scan_cuda.groups_of(torch.empty(2, 3, 5)) == 1
    assert scan_cuda.groups_of(torch.empty(2, 4, 3, 5)) == 4


# ----------------------------------------------------------------------------- CPU: emulated kernels
# The kernel templates of csrc/cuda compiled for the CPU with csrc/cuda/emu/simt_host.h (one
# std::thread per CUDA thread) behind the real bindings and the real backend modules: checks
# the kernels' indexing and arithmetic without a GPU (not their speed; memory ordering only under
# the race check, test_cuda_racecheck.py).

EMU_SANITIZE_ENV = "VIMD_EMU_SANITIZE"
EMU_SM_COUNT = 4  # small, so the forward plans several chunks at these tiny shapes


def _cuda_include() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME
    for root in (CUDA_HOME, os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "include", "cuda_fp16.h")):
            return os.path.join(root, "include")
    return None


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    """The CUDA ops of csrc/cuda/ops.cpp with the kernels running under the host emulator."""
    inc = _cuda_include()
    if inc is None:
        pytest.skip("CUDA toolkit headers (cuda_fp16.h) not found: cannot build the kernel emulator")
    from torch.utils.cpp_extension import load
    csrc = os.path.join(os.path.dirname(__file__), "..", "..", "csrc")
    sanitize = os.environ.get(EMU_SANITIZE_ENV)  # "thread": the race check (test_cuda_racecheck.py)
    san = [f"-fsanitize={sanitize}", "-g"] if sanitize else []
    name = "vimd_cuda_emu" + (f"_{sanitize}" if sanitize else "")
    preload = os.environ.pop("LD_PRELOAD", None)  # the sanitizer runtime is for this process, not the compiler
    try:
        return load(name=name, sources=[os.path.join(csrc, "cuda", "emu", "emu_ops.cpp")],
                    extra_include_paths=[os.path.abspath(csrc), inc],
                    extra_cflags=["-std=c++20", "-DVIMD_CUDA_EMULATION", "-O1", "-Wno-unknown-pragmas", *san],
                    extra_ldflags=san, build_directory=str(tmp_path_factory.mktemp(name)), verbose=False)
    finally:
        if preload is not None:
            os.environ["LD_PRELOAD"] = preload


@pytest.fixture
def emulated(emu, monkeypatch):
    """The cuda backend modules, running on CPU tensors through the emulator."""
    for mod in (scan_cuda, conv_cuda):
        monkeypatch.setattr(mod, "_ext", lambda: emu)
    monkeypatch.setattr(scan_cuda, "_device_sms", lambda t: EMU_SM_COUNT)
    return emu


def _check_backend_scan(case: ScanCase, fwd, bwd):
    """A backend's forward/backward against the reference module's, on CPU tensors."""
    from vimd_kernels.selective_scan import reference as scan_ref
    x = scan_inputs(case)
    args = [x[k] for k in SCAN_NAMES]
    flags = (case.softplus, case.reverse)
    out, last = fwd(*args, *flags)
    out_r, last_r = scan_ref.forward(*args, *flags)
    assert out.dtype == case.dtype and last.dtype == torch.float32
    assert_close(out, out_r, "scan", case.dtype, "out")
    assert_close(last, last_r, "scan", case.dtype, "last_state")
    dout = torch.randn(out.shape).to(case.dtype)
    dlast = torch.randn(last.shape)
    grads = bwd(*args, dout, dlast, *flags)
    grads_r = scan_ref.backward(*args, dout, dlast, *flags)
    for name, t, g, r in zip(SCAN_NAMES, args, grads, grads_r):
        if t is None:
            assert g is None, name
            continue
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert_close(g, r, "scan", case.dtype, f"d{name}", scale=scan_grad_scale(case, name, t))


EMU_SCAN_CASES = [
    ScanCase(2, 8, 300, 4, initial_state=True),                     # 2 tiles: chunked fwd and bwd
    ScanCase(2, 8, 300, 4, initial_state=True, reverse=True),
    ScanCase(1, 4, 2600, 2, initial_state=True, reverse=True),      # 11 tiles: > 8 chunk carries
    # odd L: most rows start off a 16-byte boundary and go through the warp's staging buffer
    ScanCase(2, 8, 299, 4, "g2", "var", initial_state=True),
    ScanCase(2, 8, 299, 4, "var", "g2", initial_state=True, reverse=True),
    ScanCase(2, 8, 197, 3, dtype=torch.bfloat16, reverse=True),
    ScanCase(1, 8, 100, 3, "g2", "const", reverse=True),
    ScanCase(2, 6, 40, 2, "g2", "g3", D=False, delta_bias=False),  # groups of 3: partly idle warps
    ScanCase(1, 4, 1, 1, "const", "const", z=False, softplus=False),
    ScanCase(2, 8, 64, 4, dtype=torch.float16, initial_state=True),
    ScanCase(2, 8, 64, 4, "g4", "var", dtype=torch.bfloat16, reverse=True, bc_dtype=torch.float32),
]


@pytest.mark.parametrize("case", EMU_SCAN_CASES, ids=str)
def test_emulated_scan_kernels_match_reference(emulated, case):
    _check_backend_scan(case, scan_cuda.forward, scan_cuda.backward)


# The forward's layout (one thread per row, kFwdRows rows per block in one B/C group segment,
# states in registers kFwdStateGroup at a time, B/C staged kFwdSteps steps at a time).
EMU_FWD_CASES = [
    ScanCase(1, 4, 30, 20, initial_state=True),                       # 2 state groups, the 2nd partly used
    ScanCase(1, 4, 21, 40, "const", "g2", initial_state=True, reverse=True),  # 3 groups, constant B
    ScanCase(2, 300, 19, 3, initial_state=True),                      # 3 blocks per row set, the last partial
    ScanCase(1, 160, 13, 4, "g2", "g4", reverse=True),                # segments of 40 rows: partial warps
    ScanCase(1, 200, 9, 17, "g4", "var", dtype=torch.bfloat16),       # 50-row segments, 2 state groups
]


@pytest.mark.parametrize("case", EMU_FWD_CASES, ids=str)
def test_emulated_forward_layouts_match_reference(emulated, case):
    _check_backend_scan(case, scan_cuda.forward, scan_cuda.backward)


# N above the kernels' register budget: passes over state slices, outputs summed (MAX_STATE
# lowered so the slices are small; one case at mamba_ssm's d_state 128 with the real budget).
EMU_SLICED_CASES = [
    ScanCase(2, 8, 40, 10, initial_state=True),                       # slices of 4, 4, 2
    ScanCase(2, 8, 300, 9, "g2", "var", initial_state=True, reverse=True),
    ScanCase(1, 4, 33, 7, "const", "g2", D=False),
    ScanCase(2, 4, 20, 5, "var", "const", z=False, delta_bias=False, softplus=False),
    ScanCase(2, 8, 64, 6, dtype=torch.bfloat16, reverse=True),
    ScanCase(1, 8, 17, 8, dtype=torch.float16, initial_state=True),   # two full slices
]


@pytest.mark.parametrize("case", EMU_SLICED_CASES, ids=str)
def test_emulated_state_slices_match_reference(emulated, monkeypatch, case):
    monkeypatch.setattr(scan_cuda, "MAX_STATE", 4)
    _check_backend_scan(case, scan_cuda.forward, scan_cuda.backward)


def test_emulated_d_state_128_matches_reference(emulated):
    assert scan_cuda.MAX_STATE < 128 <= scan_cuda.CAPS.max_state
    _check_backend_scan(ScanCase(1, 4, 24, 128, initial_state=True), scan_cuda.forward, scan_cuda.backward)


def test_state_slices_cover_the_states(monkeypatch):
    monkeypatch.setattr(scan_cuda, "MAX_STATE", 64)
    for N, sizes in ((65, [64, 1]), (128, [64, 64]), (256, [64] * 4), (200, [64, 64, 64, 8])):
        got = scan_cuda._state_slices(N)
        assert [s.stop - s.start for s in got] == sizes and got[0].start == 0 and got[-1].stop == N
        assert all(a.stop == b.start for a, b in zip(got, got[1:]))


def test_cuda_scan_capabilities_name_the_sliced_path():
    from vimd_kernels import checks, env
    caps = scan_cuda.CAPS
    assert caps.max_state == 256 and caps.pass_state == scan_cuda.MAX_STATE
    assert f"N > {scan_cuda.MAX_STATE} as passes over" in env._caps(caps)
    u, A = torch.zeros(1, 2, 3), torch.zeros(2, 257)
    with pytest.raises(ValueError, match=r"A: backend 'cuda' of selective_scan supports N <= 256 states, got N=257"):
        checks.backend("selective_scan", "cuda", io=("u", u), state=("A", A))


@pytest.mark.parametrize("chunk_len,N", [(8, 4), (200, 4), (24, 20)])
def test_emulated_forward_chunks_of_any_step_multiple(emu, chunk_len, N):
    """Chunks of a few step blocks (not multiples of the backward's tiles), with one and with two
    state groups, against one chunk over the same inputs; 38 chunks of 8 take the carries' combine
    over two groups of 32."""
    x = scan_inputs(ScanCase(2, 6, 300, N, "g2", "var", initial_state=True, reverse=True))
    args = [x[k] for k in SCAN_NAMES]
    one = emu.selective_scan_fwd_cuda(*args, True, True, 256)
    many = emu.selective_scan_fwd_cuda(*args, True, True, chunk_len)
    assert_close(many[0], one[0], "scan", torch.float32, "out")
    assert_close(many[1], one[1], "scan", torch.float32, "last_state")


def test_emulated_backward_with_more_tiles_than_a_combine_group(emulated):
    """34 tiles: the backward's summary pass, then both carries' combines over two groups of 32."""
    _check_backend_scan(ScanCase(1, 4, 8500, 2, "g2", "var", initial_state=True, reverse=True),
                        scan_cuda.forward, scan_cuda.backward)


@pytest.mark.parametrize("slab", (1, 2))
def test_emulated_backward_with_multi_slab_blocks(emulated, monkeypatch, slab):
    """Blocks that walk several groups of ROWS rows (each group adds its dB/dC to the block's
    partials), partly idle: segments of 40 channels in slabs of ROWS (a second block of 8 rows)
    or 2 ROWS (one block whose second group of rows is 8 rows, 24 idle)."""
    monkeypatch.setattr(scan_cuda, "plan_backward", lambda *a: (40, slab * scan_cuda.ROWS))
    _check_backend_scan(ScanCase(2, 80, 299, 5, "g2", "var", initial_state=True),
                        scan_cuda.forward, scan_cuda.backward)


def _nan_guarded(t: torch.Tensor, guard: int = 5) -> torch.Tensor:
    """t's values in a contiguous view with `guard` NaN elements on each side (and rows that no
    longer start on a 16-byte boundary): a kernel reading past the tensor puts NaN in its results."""
    buf = torch.full((t.numel() + 2 * guard,), float("nan"), dtype=t.dtype)
    view = buf[guard:guard + t.numel()].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("case", [ScanCase(2, 8, 299, 4, "g2", "var", initial_state=True),
                                  ScanCase(2, 8, 299, 4, reverse=True),
                                  ScanCase(1, 4, 2600, 2, reverse=True),
                                  ScanCase(2, 8, 197, 3, dtype=torch.bfloat16)], ids=str)
@pytest.mark.parametrize("walk", (False, True))
def test_emulated_scan_reads_stay_inside_the_tensors(emulated, monkeypatch, case, walk):
    """u, delta, z and dout sit between NaN guards: every output and gradient must stay finite
    and match the reference (the row-walk and tile-parallel backwards both)."""
    from vimd_kernels.selective_scan import reference as scan_ref
    monkeypatch.setattr(scan_cuda, "use_row_walk", lambda *a: walk)
    x = scan_inputs(case)
    g = {k: (_nan_guarded(v) if k in ("u", "delta", "z") and v is not None else v) for k, v in x.items()}
    args = [g[k] for k in SCAN_NAMES]
    out, last = scan_cuda.forward(*args, case.softplus, case.reverse)
    dout = torch.randn(out.shape).to(case.dtype)
    grads = scan_cuda.backward(*args, _nan_guarded(dout), None, case.softplus, case.reverse)
    for t in (out, last, *grads):
        assert t is None or torch.isfinite(t.float()).all()
    ref = scan_ref.backward(*[x[k] for k in SCAN_NAMES], dout, None, case.softplus, case.reverse)
    for name, t, got, want in zip(SCAN_NAMES, args, grads, ref):
        if t is not None:
            assert_close(got, want, "scan", case.dtype, f"d{name}", scale=scan_grad_scale(case, name, t))


@pytest.mark.parametrize("width,reverse", [(4, False), (7, True), (2, True)])
def test_emulated_conv_reads_stay_inside_the_tensors(emulated, width, reverse):
    from vimd_kernels.causal_conv1d import reference as conv_ref
    x = torch.randn(2, 3, 530)
    w, b = torch.randn(3, width), torch.randn(3)
    out = conv_cuda.forward(_nan_guarded(x), w, b, True, reverse)
    dout = torch.randn(out.shape)
    got = conv_cuda.backward(_nan_guarded(x), w, b, _nan_guarded(dout), True, reverse)
    ref = conv_ref.backward(x, w, b, dout, True, reverse)
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in got)
    assert_close(out, conv_ref.forward(x, w, b, True, reverse), "conv", torch.float32, "out")
    for name, g, r in zip(("dx", "dweight", "dbias"), got, ref):
        assert_close(g, r, "conv", torch.float32, name, scale=reduction_scale(2 * 530))


def _check_conv_slice(width, reverse, L, d=16, batch=3, device="cpu"):
    """x = xz[:, :d] (the mixer's input): rows contiguous within a batch element only. The
    forward stages a warp's rows from shared memory when they lie in one batch element and reads
    directly across a boundary; z's rows are NaN, so reading them would show."""
    from vimd_kernels.causal_conv1d import reference as conv_ref
    g = torch.Generator().manual_seed(0)
    xz = torch.randn(batch, 2 * d, L, generator=g)
    xz[:, d:] = float("nan")
    xz = xz.to(device)
    x = xz[:, :d]
    w, b = torch.randn(d, width, generator=g).to(device), torch.randn(d, generator=g).to(device)
    out = conv_cuda.forward(x, w, b, True, reverse)
    assert_close(out, conv_ref.forward(x.contiguous(), w, b, True, reverse), "conv", torch.float32, "out")
    dout = torch.randn(out.shape, generator=g).to(device)
    got = conv_cuda.backward(x, w, b, dout, True, reverse)
    ref = conv_ref.backward(x.contiguous(), w, b, dout, True, reverse)
    for name, gr, r in zip(("dx", "dweight", "dbias"), got, ref):
        assert_close(gr, r, "conv", torch.float32, name, scale=reduction_scale(batch * L))


@pytest.mark.parametrize("width,reverse,L", [(8, False, 530), (8, True, 530), (3, True, 37), (2, False, 37)])
def test_emulated_conv_channel_slice(emulated, width, reverse, L):
    """Width 8 at L = 530 fills the backward's staging range (256 steps and two halos)."""
    _check_conv_slice(width, reverse, L)


ROW_WALK_CASES = [
    ScanCase(2, 8, 300, 4, initial_state=True),
    ScanCase(2, 8, 299, 4, "g2", "var", initial_state=True, reverse=True),
    ScanCase(1, 4, 2600, 2, "const", "g2", initial_state=True),          # 11 tiles
    ScanCase(2, 8, 530, 3, dtype=torch.bfloat16, z=False, softplus=False),
]


@pytest.mark.parametrize("case", ROW_WALK_CASES, ids=str)
def test_emulated_backward_row_walk_matches_reference(emulated, monkeypatch, case):
    """The backward that walks each row's tiles in one block (forward sweep, then the tiles last
    to first), forced on at these small shapes."""
    monkeypatch.setattr(scan_cuda, "use_row_walk", lambda *a: True)
    _check_backend_scan(case, scan_cuda.forward, scan_cuda.backward)


def test_emulated_backward_row_walk_with_multi_slab_blocks(emulated, monkeypatch):
    monkeypatch.setattr(scan_cuda, "use_row_walk", lambda *a: True)
    monkeypatch.setattr(scan_cuda, "plan_backward", lambda *a: (40, 2 * scan_cuda.ROWS))
    _check_backend_scan(ScanCase(2, 80, 299, 5, "g2", "var", initial_state=True),
                        scan_cuda.forward, scan_cuda.backward)


@pytest.mark.parametrize("batch,dim,L,sms,walk", [(32, 384, 730, 132, False), (128, 384, 197, 132, True),
                                                  (128, 768, 730, 132, True), (1, 120, 65536, 132, False),
                                                  (2, 120, 4096, 132, False), (64, 384, 4096, 132, False),
                                                  (4, 8, 8, 132, True)])
def test_use_row_walk(batch, dim, L, sms, walk):
    """One backward chunk per row where the rows alone give every multiprocessor
    BWD_BLOCKS_PER_SM blocks of ROWS rows (or L is one segment)."""
    assert scan_cuda.use_row_walk(batch, dim, L, sms) is walk


@pytest.mark.parametrize("batch,dim,L,sms", [(32, 384, 730, 132), (1, 120, 65536, 132), (2, 8, 300, 4),
                                             (1, 1, 1, 1), (1, 8, 10 ** 8, 132), (3, 50, 5001, 16)])
def test_plan_bwd_chunk_len(batch, dim, L, sms):
    chunk = scan_cuda.plan_bwd_chunk_len(batch, dim, L, sms, row_walk=False)
    seg = scan_cuda.SEGMENT
    assert chunk % seg == 0 and chunk >= seg
    n = math.ceil(L / chunk)
    assert n <= 65535
    # about the chunks that give every multiprocessor BWD_BLOCKS_PER_SM blocks, no more
    segments = math.ceil(L / seg)
    target = max(math.ceil(scan_cuda.BWD_BLOCKS_PER_SM * sms / (batch * math.ceil(dim / scan_cuda.ROWS))),
                 math.ceil(segments / 65535))
    assert n <= target
    assert chunk <= math.ceil(segments / min(target, segments)) * seg
    whole = scan_cuda.plan_bwd_chunk_len(batch, dim, L, sms, row_walk=True)
    assert whole >= L and whole - L < seg


@pytest.mark.parametrize("reverse", (False, True))
def test_emulated_chunked_forward_equals_single_pass(emu, reverse):
    """Chunks of several tiles (three-phase forward) against one chunk over the same inputs."""
    case = ScanCase(1, 4, 1100, 3, "g2", "var", initial_state=True, reverse=reverse)
    x = scan_inputs(case)
    args = [x[k] for k in SCAN_NAMES]
    one = emu.selective_scan_fwd_cuda(*args, True, reverse, 1280)
    many = emu.selective_scan_fwd_cuda(*args, True, reverse, 512)
    assert_close(many[0], one[0], "scan", torch.float32, "out")
    assert_close(many[1], one[1], "scan", torch.float32, "last_state")


def _padded_rows(X: torch.Tensor, stride: int) -> torch.Tensor:
    """X's values in rows `stride` elements apart (stride >= L; the padding holds NaN)."""
    L = X.shape[-1]
    buf = torch.full((X.numel() // L * stride,), float("nan"), dtype=X.dtype)
    view = buf.view(*X.shape[:-1], stride)[..., :L]
    view.copy_(X)
    return view


def test_emulated_bindings_reject_bad_launch_arguments(emu):
    """The binding layer's own checks (behind the Python ones): chunking, N, dtypes, slabs."""
    x = scan_inputs(ScanCase(1, 8, 20, 4, "g2", "var"))
    args = [x[k] for k in SCAN_NAMES]
    with pytest.raises(RuntimeError, match="chunk_len must be a positive multiple of 8"):
        emu.selective_scan_fwd_cuda(*args, True, False, 100)
    bad = dict(x, B=x["B"].half())
    with pytest.raises(RuntimeError, match="B must be float32"):
        emu.selective_scan_fwd_cuda(*[bad[k] for k in SCAN_NAMES], True, False, 256)
    dout = torch.randn_like(x["u"])
    with pytest.raises(RuntimeError, match="seg_channels must divide the channels of every B/C group"):
        emu.selective_scan_bwd_cuda(*args, dout, None, True, False, 8, 4, 0)
    with pytest.raises(RuntimeError, match=f"slab_channels must be a positive multiple of {scan_cuda.ROWS}"):
        emu.selective_scan_bwd_cuda(*args, dout, None, True, False, 4, 6, 0)
    with pytest.raises(RuntimeError, match="chunk_len must be a positive multiple of 8"):
        emu.selective_scan_bwd_cuda(*args, dout, None, True, False, 4, scan_cuda.ROWS, 12)
    wide = dict(x, A=-torch.rand(8, 65), B=torch.randn(8, 65), C=torch.randn(8, 65))
    with pytest.raises(RuntimeError, match="N <= 64"):
        emu.selective_scan_fwd_cuda(*[wide[k] for k in SCAN_NAMES], True, False, 256)
    with pytest.raises(RuntimeError, match="weight width must be in"):
        emu.causal_conv1d_fwd_cuda(x["u"], torch.randn(8, 9), None, False, False)
    # x and z may be channel slices (any batch stride) but their rows must be contiguous steps
    xt = torch.randn(8, 2, 20).transpose(0, 1)  # (2, 8, 20), channels 2 * L apart
    with pytest.raises(RuntimeError, match="x must be rows of L contiguous steps with the channels"):
        emu.causal_conv1d_fwd_cuda(xt, torch.randn(8, 4), None, False, False)
    zt = torch.randn(20, 8).t().unsqueeze(0)  # (1, 8, 20) with the steps 8 apart
    with pytest.raises(RuntimeError, match="z must be rows of L contiguous steps with the channels"):
        emu.selective_scan_fwd_cuda(*[dict(x, z=zt)[k] for k in SCAN_NAMES], True, False, 256)
    # B/C rows may be padded but must stay rows of contiguous steps, equally spaced
    steps_apart = dict(x, C=x["C"].transpose(-1, -2).contiguous().transpose(-1, -2))
    with pytest.raises(RuntimeError, match="C must be laid out as rows of L contiguous steps"):
        emu.selective_scan_fwd_cuda(*[steps_apart[k] for k in SCAN_NAMES], True, False, 256)
    x21 = scan_inputs(ScanCase(1, 8, 21, 4, "g2", "var"))  # rows of 21 steps, 24 apart
    padded = dict(x21, B=_padded_rows(x21["B"], 24), C=_padded_rows(x21["C"], 24))
    assert padded["B"].stride(-2) == 24 and padded["C"].stride(-2) == 24
    got = emu.selective_scan_fwd_cuda(*[padded[k] for k in SCAN_NAMES], True, True, 256)
    want = emu.selective_scan_fwd_cuda(*[x21[k] for k in SCAN_NAMES], True, True, 256)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    dout21 = torch.randn_like(x21["u"])
    bwd_args = (dout21, None, True, True, 4, scan_cuda.ROWS, 0)
    got = emu.selective_scan_bwd_cuda(*[padded[k] for k in SCAN_NAMES], *bwd_args)
    want = emu.selective_scan_bwd_cuda(*[x21[k] for k in SCAN_NAMES], *bwd_args)
    assert all(torch.equal(g, w) for g, w in zip(got, want) if w is not None)


@pytest.mark.parametrize("width", range(2, 9))
@pytest.mark.parametrize("reverse", (False, True))
def test_emulated_conv_kernels_match_reference(emulated, width, reverse):
    from vimd_kernels.causal_conv1d import reference as conv_ref
    dtype = torch.float16 if width == 5 else torch.float32
    L = 37 if width % 2 == 0 else 530  # 530: a row spans three backward warps, the last ragged
    x = torch.randn(2, 3, L).to(dtype)
    w = torch.randn(3, width)
    b = torch.randn(3) if width % 2 else None
    silu = width != 3
    out = conv_cuda.forward(x, w, b, silu, reverse)
    assert_close(out, conv_ref.forward(x, w, b, silu, reverse), "conv", dtype, "out")
    dout = torch.randn(out.shape).to(dtype)
    got = conv_cuda.backward(x, w, b, dout, silu, reverse)
    ref = conv_ref.backward(x, w, b, dout, silu, reverse)
    for name, g, r in zip(("dx", "dweight", "dbias"), got, ref):
        if r is None:
            assert g is None
            continue
        assert_close(g, r, "conv", dtype, name, scale=reduction_scale(2 * L))


# ----------------------------------------------------------------------------- both directions
# ViM's two directions in one launch (bi_forward/bi_backward, the mixer op's hook): every input
# but z stacked over the directions, direction 1 reversed. Checked per direction against the
# reference module's forward/backward with reverse = bool(direction).

BI_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def _bi_inputs(case: ScanCase, device="cpu"):
    x0, x1 = scan_inputs(case, seed=0), scan_inputs(case, seed=1)
    stacked = {k: None if x0[k] is None else torch.stack([x0[k], x1[k]]).to(device) for k in BI_NAMES}
    z = None if x0["z"] is None else x0["z"].to(device)
    return stacked, z


def _check_bi_scan(case: ScanCase, device="cpu"):
    from vimd_kernels.selective_scan import reference as scan_ref
    x, z = _bi_inputs(case, device)
    args = [x[k] for k in BI_NAMES]
    u, delta, A, B, C, D, db = args
    out, last = scan_cuda.bi_forward(u, delta, A, B, C, D, z, db, case.softplus)
    assert out.shape == (2, *u.shape[1:]) and last.shape == (2, *u.shape[1:3], A.shape[-1])
    g = torch.Generator().manual_seed(3)
    dout = torch.randn(out.shape, generator=g).to(case.dtype).to(device)
    grads = scan_cuda.bi_backward(u, delta, A, B, C, D, z, db, dout, case.softplus)
    pick = lambda t, s: None if t is None else t[s]  # noqa: E731
    for s in range(2):
        one = (u[s], delta[s], A[s], B[s], C[s], D[s] if D is not None else None, z,
               pick(db, s), None)
        out_r, last_r = scan_ref.forward(*one, case.softplus, bool(s))
        assert_close(out[s], out_r, "scan", case.dtype, f"out[{s}]")
        assert_close(last[s], last_r, "scan", case.dtype, f"last_state[{s}]")
        ref = scan_ref.backward(*one, dout[s], None, case.softplus, bool(s))
        names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
        for name, got, want, t in zip(names, grads, ref[:8], one):
            if t is None:
                assert got is None, name
                continue
            got_s = got[s]
            assert got_s.shape == t.shape and got_s.dtype == t.dtype, name
            assert_close(got_s, want, "scan", case.dtype, f"d{name}[{s}]",
                         scale=scan_grad_scale(case, name, t))


def _check_bi_conv(width, bias, dtype, L=37, device="cpu"):
    from vimd_kernels.causal_conv1d import reference as conv_ref
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, L, generator=g).to(dtype).to(device)
    w = torch.randn(2, 3, width, generator=g).to(device)
    b = torch.randn(2, 3, generator=g).to(device) if bias else None
    out = conv_cuda.bi_forward(x, w, b, True)
    dout = torch.randn(out.shape, generator=g).to(dtype).to(device)
    dx, dw, db = conv_cuda.bi_backward(x, w, b, dout, True)
    for s in range(2):
        bs = None if b is None else b[s]
        assert_close(out[s], conv_ref.forward(x, w[s], bs, True, bool(s)), "conv", dtype, f"out[{s}]")
        rdx, rdw, rdb = conv_ref.backward(x, w[s], bs, dout[s], True, bool(s))
        assert_close(dx[s], rdx, "conv", dtype, f"dx[{s}]")
        assert_close(dw[s], rdw, "conv", dtype, f"dweight[{s}]", scale=reduction_scale(2 * L))
        if bias:
            assert_close(db[s], rdb, "conv", dtype, f"dbias[{s}]", scale=reduction_scale(2 * L))
        else:
            assert db is None


EMU_BI_CASES = [
    ScanCase(1, 4, 300, 3, initial_state=False),             # 2 tiles: chunked fwd, summary bwd
    ScanCase(2, 4, 20, 2, "g2", "const", D=False, delta_bias=False),
    ScanCase(1, 4, 16, 2, z=False, dtype=torch.float16),
]


@pytest.mark.parametrize("case", EMU_BI_CASES, ids=str)
def test_emulated_bi_scan_matches_reference_per_direction(emulated, case):
    _check_bi_scan(case)


@pytest.mark.parametrize("case", [ScanCase(1, 4, 300, 6), ScanCase(2, 4, 20, 5, "g2", "const", D=False)],
                         ids=str)
def test_emulated_bi_scan_state_slices(emulated, monkeypatch, case):
    monkeypatch.setattr(scan_cuda, "MAX_STATE", 4)
    _check_bi_scan(case)


@pytest.mark.parametrize("case", [ScanCase(1, 4, 300, 3), ScanCase(2, 4, 299, 2, "g2", "var")], ids=str)
def test_emulated_bi_scan_row_walk(emulated, monkeypatch, case):
    monkeypatch.setattr(scan_cuda, "use_row_walk", lambda *a: True)
    _check_bi_scan(case)


@pytest.mark.parametrize("width,bias,dtype", [(4, True, torch.float32), (3, False, torch.bfloat16)])
def test_emulated_bi_conv_matches_reference_per_direction(emulated, width, bias, dtype):
    _check_bi_conv(width, bias, dtype)


def test_emulated_bi_bindings_reject_single_direction_inputs(emu):
    x = scan_inputs(ScanCase(1, 4, 8, 2))
    with pytest.raises(RuntimeError, match="u must have a leading direction dimension of 2"):
        emu.selective_scan_bi_fwd_cuda(x["u"], x["delta"], x["A"], x["B"], x["C"], None, None, None,
                                       True, 256)
    with pytest.raises(RuntimeError, match="weight must have a leading direction dimension of 2"):
        emu.causal_conv1d_bi_fwd_cuda(x["u"], torch.randn(4, 4), None, True)


@pytest.mark.parametrize("bidirectional", (False, True))
def test_emulated_mixer_op_on_cuda_backend(emulated, bidirectional):
    """The mixer op (vimd::mixer_fwd/bwd) with backend "cuda" on the emulated kernels, both
    directions through bi_forward/bi_backward, against bimamba_v2_inner_ref / mamba_inner_ref. Batch 3:
    the kernels read x and z as channel slices of xz (batch stride 2 * d_inner * L)."""
    _check_mixer_op(bidirectional)


@pytest.mark.parametrize("bidirectional", (False, True))
def test_emulated_mixer_op_with_state_slices(emulated, monkeypatch, bidirectional):
    """The same with N above the kernels' state budget (lowered to 1): the scans run as passes over
    state slices."""
    monkeypatch.setattr(scan_cuda, "MAX_STATE", 1)
    _check_mixer_op(bidirectional)


def _check_mixer_op(bidirectional: bool) -> None:
    from tests.kernels.test_mamba_inner import BI_ORDER, _bi_inputs as mixer_inputs, _stacked_op_args
    from vimd_kernels.mamba_inner import fused
    flat = mixer_inputs(b=3, L=10, d_inner=4, N=2, rank=1)
    args = _stacked_op_args(flat, bidirectional)
    y = fused._mixer_fwd(*args, True, "cuda")
    r = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in flat.items()}
    r["out_proj_weight"] = torch.eye(4)
    r["out_proj_bias"] = None
    if bidirectional:
        y_r = bimamba_v2_inner_ref(*(r[k] for k in BI_ORDER), True)
    else:
        y_r = mamba_inner_ref(r["xz"], r["conv1d_weight"], r["conv1d_bias"], r["x_proj_weight"],
                              r["delta_proj_weight"], r["out_proj_weight"], None, r["A"], None, None,
                              r["D"], r["delta_bias"], True)
    y_r = y_r.transpose(1, 2)  # (b, d_inner, L): out_proj is the identity
    assert_close(y, y_r, "scan", torch.float32, "y")
    dy = torch.randn(y.shape)
    grads = torch.autograd.grad((y * dy).sum(), args)
    y_r.backward(dy)
    sfx = ("", "_b") if bidirectional else ("",)
    assert_close(grads[0], r["xz"].grad, "scan", torch.float32, "dxz")
    for i, name in enumerate(("conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "A",
                              "D", "delta_bias"), start=1):
        for s, suffix in enumerate(sfx):
            want = r[name + suffix].grad.reshape(grads[i][s].shape)
            assert_close(grads[i][s], want, "scan", torch.float32, f"d{name}{suffix}",
                         scale=reduction_scale(10))


# ----------------------------------------------------------------------------- CPU: emulated inference steps
# csrc/cuda/update.cuh behind the real bindings and the cuda backend modules of the update kernels,
# with the checks of tests/kernels/test_update.py (against the references and token by token).

@pytest.fixture
def emulated_steps(emu, monkeypatch):
    for mod in (state_update_cuda, conv_update_cuda):
        monkeypatch.setattr(mod, "_ext", lambda: emu)
    return emu


EMU_STEP_CASES = [c for c in test_update.STEP_CASES if c.scan.dtype != torch.float64]
EMU_CONV_STEP_CASES = [c for c in test_update.CONV_CASES if c.dtype != torch.float64]


@pytest.mark.parametrize("case", EMU_STEP_CASES, ids=str)
def test_emulated_state_update(emulated_steps, case):
    test_update.check_state_update(state_update_cuda.forward, case)
    test_update.check_state_update_token_by_token(state_update_cuda.forward, case)


@pytest.mark.parametrize("case", EMU_CONV_STEP_CASES, ids=str)
def test_emulated_conv_update(emulated_steps, case):
    test_update.check_conv_update(conv_update_cuda.forward, case)
    for chunk in (1, 3):
        test_update.check_conv_update_token_by_token(conv_update_cuda.forward, case, chunk)


def test_emulated_update_bindings_reject_bad_arguments(emu):
    state, x, A, B = torch.randn(2, 6, 4), torch.randn(2, 6), -torch.rand(6, 4), torch.randn(2, 1, 4)
    with pytest.raises(RuntimeError, match="state"):
        emu.selective_state_update_cuda(state[:, :5], x, x, A, B, B, None, None, None, False)
    with pytest.raises(RuntimeError, match="B"):
        emu.selective_state_update_cuda(state, x, x, A, torch.randn(2, 4, 4), B, None, None, None, False)
    with pytest.raises(RuntimeError, match="contiguous"):
        emu.selective_state_update_cuda(state.transpose(0, 1).contiguous().transpose(0, 1), x, x, A, B, B,
                                        None, None, None, False)
    xs, cs, w = torch.randn(2, 6, 1), torch.randn(2, 6, 3), torch.randn(6, 4)
    with pytest.raises(RuntimeError, match="conv_state"):
        emu.causal_conv1d_update_cuda(xs, cs[..., :2], w, None, True, None)
    with pytest.raises(RuntimeError, match="conv_state"):
        emu.causal_conv1d_update_cuda(xs, cs.half(), w, None, True, None)
    with pytest.raises(RuntimeError, match="cache_seqlens"):
        emu.causal_conv1d_update_cuda(xs, cs, w, None, True, torch.zeros(2, dtype=torch.int64))


# ----------------------------------------------------------------------------- GPU: inference steps

def _on_gpu(forward):
    """A backend forward run on copies of its CPU arguments on the GPU; the states (every tensor
    argument) copied back, the output returned on the CPU."""
    def step(*args):
        moved = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        out = forward(*moved)
        torch.cuda.synchronize()
        for a, m in zip(args, moved):
            if isinstance(a, torch.Tensor):
                a.copy_(m.cpu())
        return out.cpu()
    return step


@pytest.mark.cuda
@pytest.mark.parametrize("case", EMU_STEP_CASES + [
    test_update.StepCase(ScanCase(4, 384, 6, 16, "g1", "g1", initial_state=True), torch.bfloat16),
    test_update.StepCase(ScanCase(3, 130, 4, 64, dtype=torch.float16, initial_state=True))], ids=str)
def test_state_update_cuda(case):
    test_update.check_state_update(_on_gpu(state_update_cuda.forward), case)
    test_update.check_state_update_token_by_token(_on_gpu(state_update_cuda.forward), case)


@pytest.mark.cuda
@pytest.mark.parametrize("case", EMU_CONV_STEP_CASES + [test_update.ConvStepCase(8, 384, 5, 4, 60, circular=True)],
                         ids=str)
def test_conv_update_cuda(case):
    test_update.check_conv_update(_on_gpu(conv_update_cuda.forward), case)
    for chunk in (1, 3):
        test_update.check_conv_update_token_by_token(_on_gpu(conv_update_cuda.forward), case, chunk)


# ----------------------------------------------------------------------------- GPU: selective scan

def _to_cuda(inputs: dict) -> dict:
    return {k: (v.cuda() if v is not None else None) for k, v in inputs.items()}


def _run_scan(inputs, case, backend):
    fn = selective_scan_ref if backend == "ref" else ops.selective_scan_fn
    kw = {} if backend == "ref" else {"backend": backend}
    args = [inputs[k] for k in SCAN_NAMES[:8]]
    out, last = fn(*args, delta_softplus=case.softplus, return_last_state=True,
                   initial_state=inputs["initial_state"], reverse=case.reverse, **kw)
    return out, last


def _check_scan(case: ScanCase, seed: int = 0):
    base = _to_cuda(scan_inputs(case, seed))
    got_in, ref_in = leaves(base), leaves(base)
    out, last = _run_scan(got_in, case, "cuda")
    out_r, last_r = _run_scan(ref_in, case, "ref")
    assert out.dtype == case.dtype and last.dtype == torch.float32
    assert_close(out, out_r, "scan", case.dtype, "out")
    assert_close(last, last_r, "scan", case.dtype, "last_state")
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    dout = torch.randn(out.shape, generator=g, device="cuda").to(case.dtype)
    dlast = torch.randn(last.shape, generator=g, device="cuda")
    torch.autograd.backward((out, last), (dout, dlast))
    torch.autograd.backward((out_r, last_r), (dout, dlast))
    for name in SCAN_NAMES:
        t, r = got_in[name], ref_in[name]
        if t is None:
            continue
        assert t.grad is not None and t.grad.dtype == t.dtype, name
        assert_close(t.grad, r.grad, "scan", case.dtype, f"d{name}", scale=scan_grad_scale(case, name, t))


def _scan_cases():
    cases = []
    shapes = [(2, 8, 1, 1), (2, 24, 197, 16), (1, 16, 730, 10), (3, 12, 300, 16), (1, 8, 2304, 16)]
    for (b, d, L, N) in shapes:
        for kinds in (("var", "var"), ("const", "const"), ("g4", "g4"), ("var", "g2"), ("const", "g4")):
            if d % 4:
                continue
            cases.append(ScanCase(b, d, L, N, *kinds))
    full = ScanCase(2, 24, 197, 16)
    for opts in ({"D": False, "z": False, "delta_bias": False, "softplus": False},
                 {"initial_state": True}, {"reverse": True}, {"reverse": True, "initial_state": True},
                 {"z": False}, {"softplus": False}):
        cases.append(dataclasses.replace(full, **opts))
    for dt in (torch.float16, torch.bfloat16):
        cases.append(dataclasses.replace(full, dtype=dt))
        cases.append(dataclasses.replace(full, dtype=dt, reverse=True, initial_state=True, b_kind="g4"))
        cases.append(dataclasses.replace(full, dtype=dt, bc_dtype=torch.float32))
    # several tiles and chunks: L = 4096 at batch 1 takes the three-phase forward and backward
    cases.append(ScanCase(1, 120, 4096, 16, initial_state=True))
    cases.append(ScanCase(1, 120, 4096, 16, reverse=True, initial_state=True, b_kind="g4", c_kind="g4"))
    cases.append(ScanCase(1, 64, 1000, 64, b_kind="g2"))  # largest N, ragged multi-tile
    for N in (24, 40):  # static + dynamic shared memory over the 48 KB default (opt-in needed)
        cases.append(ScanCase(2, 8, 300, N))
    # Vim stride-8 rows fill the GPU: the backward walks each row's 3 tiles in one block
    cases.append(ScanCase(32, 384, 730, 16, initial_state=True))
    cases.append(ScanCase(32, 384, 730, 16, reverse=True, dtype=torch.bfloat16))
    # forward blocks of 128 rows: several per segment, the last partial; 50-row segments (partial
    # warps, and half-idle backward warps); 2 and 3 state groups (shared-memory states)
    cases.append(ScanCase(2, 300, 197, 16, initial_state=True))
    cases.append(ScanCase(2, 200, 197, 16, "g4", "var", reverse=True))
    cases.append(ScanCase(2, 200, 300, 20, "g4", "g4", dtype=torch.bfloat16))
    cases.append(ScanCase(1, 24, 500, 40, "const", "g2", initial_state=True, reverse=True))
    # more than 32 chunks (forward) and tiles (backward): the carries' combine over several groups
    cases.append(ScanCase(1, 16, 9000, 16, initial_state=True, reverse=True))
    return cases


@pytest.mark.cuda
@pytest.mark.parametrize("case", _scan_cases(), ids=str)
def test_scan_matches_reference(case):
    _check_scan(case)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_scan_super_resolution_shape(dtype):
    """DVMSR shape: batch 1, d_inner 120, L = 256 x 256 = 65536 (chunked across the GPU)."""
    _check_scan(ScanCase(1, 120, 65536, 16, dtype=dtype, initial_state=True))


@pytest.mark.cuda
@pytest.mark.parametrize("reverse", (False, True))
def test_scan_chunked_forward_equals_single_pass(reverse):
    """The three-phase forward (many chunks) matches the one-chunk walk over the same inputs."""
    case = ScanCase(2, 8, 3000, 16, initial_state=True, reverse=reverse)
    x = _to_cuda(scan_inputs(case))
    args = [x[k] for k in SCAN_NAMES]
    one = torch.ops.vimd.selective_scan_fwd_cuda(*args, True, reverse, 256 * math.ceil(3000 / 256))
    many = torch.ops.vimd.selective_scan_fwd_cuda(*args, True, reverse, 256)
    assert_close(many[0], one[0], "scan", torch.float32, "out")
    assert_close(many[1], one[1], "scan", torch.float32, "last_state")


@pytest.mark.cuda
@pytest.mark.parametrize("b_kind", ("var", "g4", "const"))
def test_scan_backward_is_bitwise_deterministic(b_kind):
    # batch 64 x 384 channels fills the GPU: the backward walks each row's 4 tiles in one block
    case = ScanCase(64, 384, 1000, 16, b_kind=b_kind, initial_state=True)
    assert scan_cuda.use_row_walk(case.batch, case.dim, case.L, _sms())
    _assert_backward_repeats_bitwise(case)


@pytest.mark.cuda
def test_scan_backward_is_bitwise_deterministic_tiles_in_parallel():
    case = ScanCase(4, 64, 1000, 16, b_kind="var", initial_state=True)  # few rows: summary + combine
    assert not scan_cuda.use_row_walk(case.batch, case.dim, case.L, _sms())
    _assert_backward_repeats_bitwise(case)


def _sms() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count


def _assert_backward_repeats_bitwise(case: ScanCase):
    base = _to_cuda(scan_inputs(case))
    dout = torch.randn(base["u"].shape, device="cuda")
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            x = leaves(base)
            out = _run_scan(x, case, "cuda")[0]
            out.backward(dout)
            grads.append([x[k].grad.clone() for k in SCAN_NAMES if x[k] is not None])
    finally:
        torch.use_deterministic_algorithms(prev)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_scan_cuda_rejects_float64():
    x = _to_cuda(scan_inputs(ScanCase(dtype=torch.float64)))
    with pytest.raises(TypeError, match="float64"):
        ops.selective_scan_fn(*[x[k] for k in SCAN_NAMES[:8]], backend="cuda")


# ----------------------------------------------------------------------------- GPU: causal conv1d

def _conv_cases():
    cases = []
    for width in range(2, 9):
        cases.append((2, 16, 197, width, True, True, False, torch.float32))
    for L in (1, 5, 730, 4096):
        cases.append((2, 24, L, 4, True, True, True, torch.float32))
    for silu in (False, True):
        for bias in (False, True):
            for reverse in (False, True):
                cases.append((2, 16, 100, 4, silu, bias, reverse, torch.float32))
    for dt in (torch.float16, torch.bfloat16):
        cases.append((2, 16, 197, 4, True, True, False, dt))
        cases.append((2, 16, 197, 7, True, False, True, dt))
    return cases


@pytest.mark.cuda
@pytest.mark.parametrize("batch,dim,L,width,silu,bias,reverse,dtype", _conv_cases())
def test_conv_matches_reference(batch, dim, L, width, silu, bias, reverse, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, dim, L, generator=g, device="cuda").to(dtype)
    w = torch.randn(dim, width, generator=g, device="cuda")
    b = torch.randn(dim, generator=g, device="cuda") if bias else None
    act = "silu" if silu else None
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    bs = b.clone().requires_grad_() if bias else None
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    br = b.clone().requires_grad_() if bias else None
    out = ops.causal_conv1d_fn(xs, ws, bs, act, reverse=reverse, backend="cuda")
    ref = causal_conv1d_ref(xr, wr, br, act, reverse=reverse)
    assert_close(out, ref, "conv", dtype, "out")
    dout = torch.randn(out.shape, generator=g, device="cuda").to(dtype)
    out.backward(dout)
    ref.backward(dout)
    assert_close(xs.grad, xr.grad, "conv", dtype, "dx")
    scale = reduction_scale(batch * L)
    assert_close(ws.grad, wr.grad, "conv", dtype, "dweight", scale=scale)
    if bias:
        assert_close(bs.grad, br.grad, "conv", dtype, "dbias", scale=scale)


@pytest.mark.cuda
def test_conv_backward_is_bitwise_deterministic():
    x = torch.randn(4, 64, 1000, device="cuda")
    w = torch.randn(64, 4, device="cuda")
    b = torch.randn(64, device="cuda")
    dout = torch.randn_like(x)
    grads = [conv_cuda.backward(x, w, b, dout, True, False) for _ in range(2)]
    for a, c in zip(*grads):
        assert torch.equal(a, c)


# ----------------------------------------------------------------------------- GPU: both directions

@pytest.mark.cuda
@pytest.mark.parametrize("case", [ScanCase(2, 24, 197, 16), ScanCase(1, 120, 4096, 16, b_kind="g4"),
                                  ScanCase(2, 16, 730, 16, dtype=torch.bfloat16),
                                  ScanCase(2, 8, 100, 4, "const", "g2", z=False, D=False)], ids=str)
def test_bi_scan_matches_reference_per_direction(case):
    _check_bi_scan(case, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("width,reverse,L,d", [(4, False, 197, 384), (4, True, 197, 384), (8, True, 730, 192),
                                               (3, False, 37, 16)])
def test_conv_channel_slice(width, reverse, L, d):
    _check_conv_slice(width, reverse, L, d=d, batch=4, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("width,bias,dtype", [(4, True, torch.float32), (2, False, torch.float16),
                                              (8, True, torch.bfloat16)])
def test_bi_conv_matches_reference_per_direction(width, bias, dtype):
    _check_bi_conv(width, bias, dtype, L=730, device="cuda")


# ----------------------------------------------------------------------------- GPU: mixer paths

def _mixer_weights(d_model, d_inner, N, rank, width, gen, suffix=""):
    dev = "cuda"
    return {
        "conv1d_weight" + suffix: torch.randn(d_inner, 1, width, generator=gen, device=dev) * 0.5,
        "conv1d_bias" + suffix: torch.randn(d_inner, generator=gen, device=dev) * 0.1,
        "x_proj_weight" + suffix: torch.randn(rank + 2 * N, d_inner, generator=gen, device=dev) * d_inner ** -0.5,
        "delta_proj_weight" + suffix: torch.randn(d_inner, rank, generator=gen, device=dev) * rank ** -0.5,
        "A" + suffix: -torch.exp(torch.log(torch.arange(1, N + 1, device=dev, dtype=torch.float32)).repeat(d_inner, 1)),
        "D" + suffix: torch.ones(d_inner, device=dev),
        "delta_bias" + suffix: torch.rand(d_inner, generator=gen, device=dev) * 0.1 - 4.0,
    }


@pytest.mark.cuda
@pytest.mark.parametrize("bidirectional", (False, True))
@pytest.mark.parametrize("L", (197, 730))
def test_mixer_paths_match_reference(bidirectional, L):
    gen = torch.Generator(device="cuda").manual_seed(0)
    d_model, d_inner, N, rank, width, batch = 32, 64, 16, 2, 4, 2
    w = _mixer_weights(d_model, d_inner, N, rank, width, gen)
    if bidirectional:
        w.update(_mixer_weights(d_model, d_inner, N, rank, width, gen, "_b"))
    w["out_proj_weight"] = torch.randn(d_model, d_inner, generator=gen, device="cuda") * d_inner ** -0.5
    xz = torch.randn(batch, 2 * d_inner, L, generator=gen, device="cuda")
    got = {k: v.clone().requires_grad_() for k, v in w.items()}
    ref = {k: v.clone().requires_grad_() for k, v in w.items()}
    xg, xr = xz.clone().requires_grad_(), xz.clone().requires_grad_()
    if bidirectional:
        names = ("conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "A", "D",
                 "delta_bias")
        args = lambda d, x: (x, *[d[n] for n in names], *[d[n + "_b"] for n in names],  # noqa: E731
                             d["out_proj_weight"])
        y = ops.bimamba_v2_inner_fn(*args(got, xg), backend="cuda")
        y_r = bimamba_v2_inner_ref(*args(ref, xr))
    else:
        kw = lambda d: dict(D=d["D"], delta_bias=d["delta_bias"])  # noqa: E731
        pos = lambda d, x: (x, d["conv1d_weight"], d["conv1d_bias"], d["x_proj_weight"],  # noqa: E731
                            d["delta_proj_weight"], d["out_proj_weight"], None, d["A"])
        y = ops.mamba_inner_fn(*pos(got, xg), **kw(got), backend="cuda")
        y_r = mamba_inner_ref(*pos(ref, xr), **kw(ref))
    assert_close(y, y_r, "scan", torch.float32, "out")
    dy = torch.randn(y.shape, generator=gen, device="cuda")
    y.backward(dy)
    y_r.backward(dy)
    assert_close(xg.grad, xr.grad, "scan", torch.float32, "dxz")
    for k in got:
        assert_close(got[k].grad, ref[k].grad, "scan", torch.float32, f"d{k}",
                     scale=reduction_scale(batch * L))


@pytest.mark.cuda
@pytest.mark.parametrize("reverse", (False, True))
def test_custom_ops_opcheck_cuda(reverse):
    """The vimd:: custom ops with backend "cuda" pass torch.library.opcheck (fake impls, autograd)."""
    case = ScanCase(2, 8, 300, 16, b_kind="g2", initial_state=True, reverse=reverse)
    x = leaves(_to_cuda(scan_inputs(case)))
    torch.library.opcheck(ops._selective_scan_fwd,
                          (*[x[k] for k in SCAN_NAMES], True, reverse, "cuda"))
    xc = torch.randn(2, 8, 300, device="cuda", requires_grad=True)
    w = torch.randn(8, 4, device="cuda", requires_grad=True)
    b = torch.randn(8, device="cuda", requires_grad=True)
    torch.library.opcheck(ops._causal_conv1d_fwd, (xc, w, b, True, reverse, "cuda"))
