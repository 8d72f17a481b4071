"""CUDA backend of the selective scan: the kernels of csrc/cuda, ``torch.ops.vimd.*_cuda``.

Launch planning (how L is cut into chunks, how channels are grouped for the backward's
deterministic dB/dC reduction) is plain Python here, so it is testable without a GPU.
The kernels take B/C in float32 (they are a small fraction of the traffic): other dtypes are
converted here and their gradients converted back. The backward is always deterministic
(per-block partials and ordered reductions, no float atomics), so it is bitwise reproducible
whether or not ``torch.use_deterministic_algorithms`` is on.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backend import Capabilities
from ..devices import device_sms as _device_sms  # (a module global: the emulator tests replace it)
from ..native import bindings
from ..native import ops as _ext  # the CUDA ops (a module global: the emulator tests replace it)

_C = bindings()

# The kernels' layout (csrc/cuda/layout.h), as every build of the extension exports it.
ROWS = _C.cuda_bwd_rows  # backward: rows per block (one warp, a thread per row)
SEGMENT = _C.cuda_bwd_segment  # backward: steps between state checkpoints; chunks are multiples of it
MAX_STATE = _C.cuda_scan_max_state
FWD_ROWS = _C.cuda_fwd_rows  # forward: rows (one thread each) per block
FWD_STEPS = _C.cuda_fwd_steps  # forward: steps staged per iteration; chunks are multiples of it
FWD_BLOCKS_PER_SM = _C.cuda_fwd_blocks  # forward main kernel's register budget (B/C grouped)

# u / delta / z in float32, float16 or bfloat16 (float64: backend 'ref' or 'cpu'); z may be a
# channel slice of a bigger tensor (rows of L contiguous steps, any batch stride): the mixer passes
# xz[:, d:] without a copy (vimd_kernels/mamba_inner/fused.py).
CAPS = Capabilities(dtypes=(torch.float32, torch.float16, torch.bfloat16), max_state=256,
                    pass_state=MAX_STATE, deterministic=True, row_views=True)

# The forward planner's cost model (plan_chunk_len, fwd_cost). Its constants are estimates, not
# timings of these kernels; tools/gpu/scan_plan.py times the planned split against forced ones.
# The forward's summary pass relative to its main pass: the same exp2 per step, no C, no outputs.
SUMMARY_COST = 0.9
# A lone block's rate relative to a multiprocessor's full rate: the resident blocks share its ex2
# throughput and memory pipes, and one block alone (a warp per SM sub-partition) leaves most of
# them idle on latency.
LONE_BLOCK_EFF = 0.48
# A block's start (its first tile's loads, the chunk's entry and end states), in units of one of
# its FWD_STEPS-step tiles: keeps the planner from cutting L into many short chunks for a
# near-tie in the estimate.
BLOCK_START_COST = 1.0
# Per chunk, in units of one block's FWD_STEPS steps at a multiprocessor's full rate (~0.6 us:
# 128 rows x 8 steps x 16 exp2 at 16 per clock): the carries' combine composes 32 chunks per warp
# shuffle scan (~10 cycles a chunk), plus the summary pass's chunk state writes.
CHUNK_COST = 0.02
# Backward blocks (one warp each) per multiprocessor to keep busy: L is cut into chunks while the
# rows give fewer, and channel slabs grow while the grid keeps this many.
BWD_BLOCKS_PER_SM = 8


def groups_of(X: Tensor) -> int:
    """0 for constant (dim, N), 1 for variable (batch, N, L), G for grouped (batch, G, N, L)."""
    return {2: 0, 3: 1}.get(X.dim(), X.shape[1] if X.dim() == 4 else -1)


def plan_chunk_len(batch: int, dim: int, L: int, sm_count: int) -> int:
    """Forward chunk length (a multiple of FWD_STEPS).

    One chunk per row when the rows give every multiprocessor work (ViM: batch x d_inner rows).
    Otherwise L is split into chunks, and the split is the one with the least estimated time: a
    block (FWD_ROWS rows) walks its chunk's steps in sequence; the blocks share their
    multiprocessor's ex2 throughput, so the busiest multiprocessor's blocks x steps is the time
    (a lone block runs at LONE_BLOCK_EFF, each block adds BLOCK_START_COST); more than one chunk
    adds the summary pass (again every step's exp2) and the carries' combine. Splitting therefore
    pays only where multiprocessors would otherwise idle or hold a lone block (DVMSR: 120 rows, one
    block of them; ViM stride 8 at batch 32: 96 blocks for 132 multiprocessors).
    """
    if min(batch, dim, L, sm_count) < 1:
        raise ValueError("batch, dim, L and sm_count must be >= 1")
    steps = _plan_chunk_tiles(batch * math.ceil(dim / FWD_ROWS), math.ceil(L / FWD_STEPS), sm_count)
    return steps * FWD_STEPS


def fwd_cost(col_blocks: int, tiles: int, chunk_tiles: int, sm_count: int) -> float:
    """The planner's time estimate (see plan_chunk_len) of a forward over `tiles` FWD_STEPS-step
    blocks split into chunks of `chunk_tiles`, with `col_blocks` blocks of rows per chunk."""
    n = math.ceil(tiles / chunk_tiles)
    per_sm = math.ceil(col_blocks * n / sm_count)  # blocks on the busiest multiprocessor
    t = per_sm * (chunk_tiles + BLOCK_START_COST) / (LONE_BLOCK_EFF if per_sm == 1 else 1.0)
    return t if n == 1 else t * (1 + SUMMARY_COST) + CHUNK_COST * n


@functools.lru_cache(maxsize=256)
def _plan_chunk_tiles(col_blocks: int, tiles: int, sm_count: int) -> int:
    min_tiles = math.ceil(tiles / 65535)  # grid.z limit on the number of chunks
    if col_blocks >= 2 * sm_count or tiles == 1:  # every multiprocessor has two blocks: no split pays
        return max(tiles, min_tiles)
    # More chunks than a few blocks per multiprocessor only add overhead.
    max_chunks = min(tiles, 8 * math.ceil(FWD_BLOCKS_PER_SM * sm_count / col_blocks))
    candidates = {max(math.ceil(tiles / n), min_tiles) for n in range(1, max_chunks + 1)}
    return min(candidates, key=lambda ct: (fwd_cost(col_blocks, tiles, ct, sm_count), -ct))


def use_row_walk(batch: int, dim: int, L: int, sm_count: int) -> bool:
    """Backward: one chunk per row (each block walks its rows' whole L, no summary pass) when the
    rows alone give every multiprocessor BWD_BLOCKS_PER_SM blocks; otherwise L is cut into chunks
    that run in parallel after a summary pass and the carries' combine (``plan_bwd_chunk_len``)."""
    return L <= SEGMENT or batch * math.ceil(dim / ROWS) >= BWD_BLOCKS_PER_SM * sm_count


def plan_bwd_chunk_len(batch: int, dim: int, L: int, sm_count: int, row_walk: bool) -> int:
    """Backward chunk length (a multiple of SEGMENT): the whole row with ``row_walk``, else the
    fewest chunks that give every multiprocessor BWD_BLOCKS_PER_SM blocks (at least one segment
    each, at most 65535 chunks, the grid's limit)."""
    if min(batch, dim, L, sm_count) < 1:
        raise ValueError("batch, dim, L and sm_count must be >= 1")
    segments = math.ceil(L / SEGMENT)
    if row_walk:
        return segments * SEGMENT
    n = math.ceil(BWD_BLOCKS_PER_SM * sm_count / (batch * math.ceil(dim / ROWS)))
    n = min(max(n, math.ceil(segments / 65535)), segments)
    return math.ceil(segments / n) * SEGMENT


def plan_backward(batch: int, dim: int, L: int, b_groups: int, c_groups: int,
                  sm_count: int, n_chunks: int = 1) -> tuple[int, int]:
    """(seg_channels, slab_channels) for the backward launch.

    A segment is a run of channels inside one group of every grouped B/C (the gcd of their
    group sizes), so a block's summed dB/dC belong to one group. A slab is the channels one block
    walks (a multiple of ROWS, the block's rows): larger slabs mean fewer dB/dC partials to store
    and reduce, so slabs grow while the grid still has BWD_BLOCKS_PER_SM blocks per multiprocessor.
    """
    sizes = []
    for G in (b_groups, c_groups):
        if G < 0 or (G > 0 and dim % G):
            raise ValueError(f"groups must be 0 or divide dim={dim}, got {G}")
        if G > 0:
            sizes.append(dim // G)
    seg = functools.reduce(math.gcd, sizes) if sizes else dim
    if not sizes:
        return seg, ROWS  # no grouped operand: nothing summed across channels in a block
    cap = math.ceil(seg / ROWS) * ROWS

    def blocks(slab: int) -> int:
        return batch * n_chunks * (dim // seg) * math.ceil(seg / slab)

    slab = ROWS
    while slab * 2 <= cap and blocks(slab * 2) >= BWD_BLOCKS_PER_SM * sm_count:
        slab *= 2
    return seg, slab


def _f32(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def forward(u, delta, A, B, C, D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
            initial_state: Optional[Tensor], delta_softplus: bool, reverse: bool) -> tuple[Tensor, Tensor]:
    if A.shape[1] > MAX_STATE:
        return _sliced_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse)
    return _kernel_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse)


def backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
             delta_softplus: bool, reverse: bool):
    if A.shape[1] > MAX_STATE:
        return _sliced_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
                                delta_softplus, reverse)
    return _kernel_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
                            delta_softplus, reverse)


def _kernel_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse):
    batch, dim, L = u.shape
    chunk_len = plan_chunk_len(batch, dim, L, _device_sms(u))
    # the forward stages B/C rows through shared memory with coalesced loads: no padding needed
    out, last = _ext().selective_scan_fwd_cuda(u, delta, A, _f32(B), _f32(C), D, z,
                                               delta_bias,
                                               initial_state, bool(delta_softplus), bool(reverse),
                                               chunk_len)
    return out, last


def _kernel_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
                     delta_softplus, reverse):
    batch, dim, L = u.shape
    sms = _device_sms(u)
    chunk_len = plan_bwd_chunk_len(batch, dim, L, sms, use_row_walk(batch, dim, L, sms))
    seg, slab = plan_backward(batch, dim, L, groups_of(B), groups_of(C), sms, math.ceil(L / chunk_len))
    # the backward stages B/C rows through shared memory with coalesced loads: no padding needed
    grads = _ext().selective_scan_bwd_cuda(u, delta, A, _f32(B), _f32(C), D, z,
                                           delta_bias, initial_state, dout.contiguous(),
                                           _f32(dlast_state), bool(delta_softplus), bool(reverse), seg,
                                           slab, chunk_len)
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinit = grads
    return (du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz, ddelta_bias, dinit)


# ----------------------------------------------------------------------------- N > MAX_STATE
# The kernels hold a row's states in registers, at most MAX_STATE of them. Each state is its own
# recurrence (h_n = exp(delta A_n) h_n + delta B_n u) and the output sums them (C_n h_n), so a
# larger N runs as kernel passes over slices of at most MAX_STATE states, without D or the z gate,
# in float32; their outputs are summed and D and the gate applied once to the sum. The backward
# runs the slices' backward on the gate's gradient (recomputing the slices' forward first when z
# needs the ungated output) and sums du / ddelta / ddelta_bias over them.

def _state_slices(N: int) -> list[slice]:
    return [slice(i, min(i + MAX_STATE, N)) for i in range(0, N, MAX_STATE)]


def _bc(X: Tensor, s: slice) -> Tensor:
    """States ``s`` of B or C: constant (dim, N), variable (batch, N, L) or grouped (batch, G, N, L)."""
    return (X[:, s] if X.dim() == 2 else X[..., s, :]).contiguous()


def _states(X: Optional[Tensor], s: slice) -> Optional[Tensor]:
    """States ``s`` of a (batch, dim, N) state."""
    return None if X is None else X[..., s].contiguous()


def _sliced_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse):
    u32, delta32 = u.float(), delta.float()
    y, lasts = None, []
    for s in _state_slices(A.shape[1]):
        out, last = _kernel_forward(u32, delta32, A[:, s].contiguous(), _bc(B, s), _bc(C, s), None, None,
                                    delta_bias, _states(initial_state, s), delta_softplus, reverse)
        y = out if y is None else y.add_(out)
        lasts.append(last)
    return _gate(y, u32, D, z).to(u.dtype), torch.cat(lasts, dim=-1)


def _gate(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> Tensor:
    if D is not None:
        y = y + D.float()[:, None] * u
    return y if z is None else y * F.silu(z.float())


def _sliced_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
                     delta_softplus, reverse):
    u32, delta32 = u.float(), delta.float()
    g = dout.float()
    dz = None
    if z is not None:
        y = _sliced_forward(u32, delta32, A, B, C, D, None, delta_bias, initial_state, delta_softplus,
                            reverse)[0]
        z32 = z.float()
        sig = torch.sigmoid(z32)
        dz = (g * y * sig * (1 + z32 * (1 - sig))).to(z.dtype)
        g = g * z32 * sig
    g = g.contiguous()
    du = g * D.float()[:, None] if D is not None else torch.zeros_like(u32)
    dD = (g * u32).sum((0, 2)).to(D.dtype) if D is not None else None
    ddelta = torch.zeros_like(delta32)
    ddelta_bias = None if delta_bias is None else torch.zeros_like(delta_bias, dtype=torch.float32)
    dA, dB, dC, dinit = [], [], [], []
    for s in _state_slices(A.shape[1]):
        grads = _kernel_backward(u32, delta32, A[:, s].contiguous(), _bc(B, s), _bc(C, s), None, None,
                                 delta_bias, _states(initial_state, s), g,
                                 _states(dlast_state, s),
                                 delta_softplus, reverse)
        du_s, ddelta_s, dA_s, dB_s, dC_s, _, _, ddb_s, dinit_s = grads
        du.add_(du_s)
        ddelta.add_(ddelta_s)
        if ddelta_bias is not None:
            ddelta_bias.add_(ddb_s)
        dA.append(dA_s), dB.append(dB_s), dC.append(dC_s), dinit.append(dinit_s)
    cat_bc = lambda parts, X: torch.cat(parts, dim=-1 if X.dim() == 2 else -2).to(X.dtype)  # noqa: E731
    return (du.to(u.dtype), ddelta.to(delta.dtype), torch.cat(dA, dim=1), cat_bc(dB, B), cat_bc(dC, C), dD,
            dz, None if delta_bias is None else ddelta_bias.to(delta_bias.dtype),
            None if initial_state is None else torch.cat(dinit, dim=-1).to(initial_state.dtype))


# ----------------------------------------------------------------------------- both directions
# ViM's two directions in one launch (the mixer op's hook, vimd_kernels/mamba_inner/fused.py):
# every input but z has a leading direction dimension of 2; direction 1 runs reversed.

def bi_forward(u, delta, A, B, C, D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
               delta_softplus: bool) -> tuple[Tensor, Tensor]:
    if A.shape[-1] > MAX_STATE:  # sliced passes, one direction at a time
        outs = [forward(u[s], delta[s], A[s], B[s], C[s], _at(D, s), z, _at(delta_bias, s), None,
                        delta_softplus, bool(s)) for s in (0, 1)]
        return torch.stack([o for o, _ in outs]), torch.stack([h for _, h in outs])
    _, batch, dim, L = u.shape
    chunk_len = plan_chunk_len(batch, 2 * dim, L, _device_sms(u))  # both directions fill the grid
    return _ext().selective_scan_bi_fwd_cuda(u, delta, A, _f32(B), _f32(C), D, z, delta_bias,
                                             bool(delta_softplus), chunk_len)


def bi_backward(u, delta, A, B, C, D, z, delta_bias, dout, delta_softplus: bool):
    if A.shape[-1] > MAX_STATE:
        grads = [backward(u[s], delta[s], A[s], B[s], C[s], _at(D, s), z, _at(delta_bias, s), None,
                          dout[s].contiguous(), None, delta_softplus, bool(s))[:8] for s in (0, 1)]
        return tuple(None if g[0] is None else torch.stack(g) for g in zip(*grads))
    _, batch, dim, L = u.shape
    sms = _device_sms(u)
    walk = use_row_walk(2 * batch, dim, L, sms)  # both directions share the grid
    chunk_len = plan_bwd_chunk_len(2 * batch, dim, L, sms, walk)
    seg, slab = plan_backward(2 * batch, dim, L, groups_of(B[0]), groups_of(C[0]), sms,
                              math.ceil(L / chunk_len))
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = _ext().selective_scan_bi_bwd_cuda(
        u, delta, A, _f32(B), _f32(C), D, z, delta_bias, dout[0].contiguous(),
        dout[1].contiguous(), bool(delta_softplus), seg, slab, chunk_len)
    return du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dz, ddelta_bias


def _at(X: Optional[Tensor], s: int) -> Optional[Tensor]:
    return None if X is None else X[s]
