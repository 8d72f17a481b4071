"""Triton selective scan (the "triton" backend): forward and backward, no atomics.

Layout of the work: one program per block of BLOCK_D rows of one batch element (rows = channels).
A program keeps its rows' states, a (BLOCK_D, N) block, in registers and walks the L steps in
order: per step it loads one value per row of u, delta (and z), the step's B_t / C_t (shared by
the block's rows: a block lies inside one group of grouped B/C), and updates
h = exp(delta A) h + delta B_t u.  ``reverse=True`` only changes the address of step p to L-1-p.

Backward, checkpointed recompute: a forward walk over L saves the state entering every segment of
SEG steps; the segments are then visited last to first.  For each, a forward walk from its
checkpoint writes the segment's SEG + 1 states to a per-program scratch block (cache resident),
and a walk back over the segment runs the adjoint g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}
(started from dlast_state) and forms every gradient.  Per-row sums (dA, dD, d(delta_bias), and
dB / dC when constant) stay in registers; variable dB / dC are summed over the block's rows in the
program and written per (block, batch, step); every partial is then summed over programs in a
fixed order, so gradients are bitwise reproducible.

Long L with few rows (batch-1 super-resolution): L is split into chunks, a program per (block,
batch, chunk), in three phases: every chunk summarises itself (decay product P, end state S from a
zero start, and for the backward Q = sum_t P_t C_t dy_t), a sequential walk over the chunks turns
the summaries into the state entering every chunk (and the adjoint entering every chunk's end),
then every chunk runs from its true start.

Launch configuration: ``launch_forward`` / ``launch_backward`` take a ``LaunchConfig`` (rows per
program, warps, the backward's segment, the L chunks); the backend's entry points ``forward`` /
``backward`` launch with ``CONFIGS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities
from ..devices import device_sms
from ..triton_utils import FP_FUSION, compute_dtype, pow2, rows, softplus, step_addr

# z may be a channel slice of a bigger tensor (any batch stride): the mixer passes xz[:, d:] as is.
CAPS = Capabilities(dtypes=FLOAT_DTYPES, deterministic=True, row_views=True)


@dataclass(frozen=True)
class LaunchConfig:
    """How one forward or backward call launches its kernels (``launch_forward`` /
    ``launch_backward`` take one; ``CONFIGS`` holds the defaults, ``dataclasses.replace`` of one
    gives a variant)."""
    block_d: int  # rows (channels) per program, a power of two (shrinks to fit dim, and to divide
    # dim / G with grouped B/C)
    warps: int
    seg: int = 32  # steps between the backward's state checkpoints (its recompute segment); L
    # chunks are a multiple of it, in the forward too
    chunk_len: Optional[int] = None  # steps per L chunk, a multiple of seg (None: planned, SPLIT)
    max_regs: Optional[int] = None  # registers a thread may use (None: ptxas's choice, which may
    # spill to raise occupancy: ptxas 13 spills the backward at 80 / 96 / 128 registers)

    def __post_init__(self):
        for name in ("block_d", "warps"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"LaunchConfig.{name} must be a power of two, got {v}")
        if self.seg < 1:
            raise ValueError(f"LaunchConfig.seg must be >= 1, got {self.seg}")
        if self.chunk_len is not None and (self.chunk_len < 1 or self.chunk_len % self.seg):
            raise ValueError(f"LaunchConfig.chunk_len={self.chunk_len} must be a positive multiple "
                             f"of seg={self.seg}")


# The launch configuration of each kernel's calls: "fwd" for launch_forward (the backend's
# forward), "bwd" for launch_backward (the backend's backward, its summary pass included).
CONFIGS = {
    "fwd": LaunchConfig(block_d=32, warps=4),
    "bwd": LaunchConfig(block_d=32, warps=4, max_regs=255),
}
# Long L with few rows (batch-1 super-resolution): L is split into chunks that run in parallel
# (three phases) until the grid has programs_per_sm programs per multiprocessor, the chunks no
# shorter than min_steps.
SPLIT = {"programs_per_sm": 4, "min_steps": 256}

_CONST, _VAR = 0, 1  # B/C kinds: constant (dim, N) or variable/grouped (batch, G, N, L)


class _ScanFlags(NamedTuple):
    """What a scan call computes: the kernels' FLAGS, one constexpr (each value compiles its own
    kernel)."""
    reverse: bool
    b_kind: int  # _CONST or _VAR
    c_kind: int
    softplus: bool
    has_d: bool
    has_z: bool
    has_db: bool


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _bc_base(X_ptr, KIND: tl.constexpr, G, b, dim, L, N, offs_d, offs_n, n_mask, dn_mask,
             BD: tl.constexpr, CT: tl.constexpr):
    """Constant B/C: the rows' (BD, NP) values.  Variable/grouped: the pointers of the block's
    group's N rows of L steps (step idx of state n at ptrs[n] + idx)."""
    if KIND == 0:
        return tl.load(X_ptr + offs_d[:, None] * N + offs_n[None, :], mask=dn_mask, other=0.0).to(CT)
    else:
        g = (tl.program_id(0) * BD) // (dim // G)
        return X_ptr + ((b * G + g) * N + offs_n).to(tl.int64) * L


@triton.jit
def _bc_at(X, KIND: tl.constexpr, n_mask, idx, CT: tl.constexpr):
    """B_t / C_t at address idx: (BD, NP) constant values or (1, NP) loaded."""
    if KIND == 0:
        return X
    else:
        return tl.load(X + idx, mask=n_mask, other=0.0).to(CT)[None, :]


@triton.jit
def _step_in(u_ptr, delta_ptr, row, idx, d_mask, dbias, FLAGS: tl.constexpr, CT: tl.constexpr):
    """u, delta + delta_bias (the softplus input) and delta after softplus, one per row at idx."""
    u = tl.load(u_ptr + row + idx, mask=d_mask, other=0.0).to(CT)
    pre = tl.load(delta_ptr + row + idx, mask=d_mask, other=0.0).to(CT) + dbias
    if FLAGS.softplus:
        dt = softplus(pre)
    else:
        dt = pre
    return u, pre, dt


@triton.jit
def _gate(z_ptr, zrow, idx, d_mask, CT: tl.constexpr):
    """silu(z) and its derivative at idx, one per row."""
    z = tl.load(z_ptr + zrow + idx, mask=d_mask, other=0.0).to(CT)
    sz = 1.0 / (1.0 + tl.exp(-z))
    return z * sz, sz * (1.0 + z * (1.0 - sz))


@triton.jit
def _state_in(ptr, HAS: tl.constexpr, PER_CHUNK: tl.constexpr, chunk_off, batch_off, dn_mask,
              BD: tl.constexpr, NP: tl.constexpr, CT: tl.constexpr):
    """A (BD, NP) state block entering the program's chunk: per (batch, chunk) when PER_CHUNK,
    else per batch element; zeros when absent."""
    x = tl.zeros((BD, NP), dtype=CT)
    if HAS:
        if PER_CHUNK:
            x = tl.load(ptr + chunk_off, mask=dn_mask, other=0.0).to(CT)
        else:
            x = tl.load(ptr + batch_off, mask=dn_mask, other=0.0).to(CT)
    return x


@triton.jit
def _program(A_ptr, B_ptr, C_ptr, D_ptr, db_ptr, h0_ptr, dim, L, N, B_G, C_G, z_shift, n_chunks,
             FLAGS: tl.constexpr, HAS_H0: tl.constexpr, H0_PER_CHUNK: tl.constexpr,
             BD: tl.constexpr, NP: tl.constexpr, CT: tl.constexpr):
    """The program's work: BD rows from program_id(0) * BD of batch element b = program_id(1), in
    chunk c = program_id(2) of L.  Returns b, c, the rows (offs_d, d_mask), the states (offs_n,
    n_mask), the (BD, NP) block's mask and its offsets in a (dim, N), a (batch, dim, N) and a
    (batch, n_chunks, dim, N) tensor, the rows' A (BD, NP), D and delta_bias (BD,) (zeros when
    absent), the state h entering the chunk (from h0, zeros without), the B/C bases (_bc_base)
    and the rows' offsets in the (batch, dim, L) tensors and in z."""
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    offs_d = tl.program_id(0) * BD + tl.arange(0, BD)
    d_mask = offs_d < dim
    offs_n = tl.arange(0, NP)
    n_mask = offs_n < N
    dn_mask = d_mask[:, None] & n_mask[None, :]
    state_off = offs_d[:, None] * N + offs_n[None, :]
    batch_off = b * dim * N + state_off
    chunk_off = ((b * n_chunks + c) * dim) * N + state_off
    A = tl.load(A_ptr + state_off, mask=dn_mask, other=0.0).to(CT)
    Dv = tl.zeros((BD,), dtype=CT)
    if FLAGS.has_d:
        Dv = tl.load(D_ptr + offs_d, mask=d_mask, other=0.0).to(CT)
    dbias = tl.zeros((BD,), dtype=CT)
    if FLAGS.has_db:
        dbias = tl.load(db_ptr + offs_d, mask=d_mask, other=0.0).to(CT)
    h = _state_in(h0_ptr, HAS_H0, H0_PER_CHUNK, chunk_off, batch_off, dn_mask, BD, NP, CT)
    Bx = _bc_base(B_ptr, FLAGS.b_kind, B_G, b, dim, L, N, offs_d, offs_n, n_mask, dn_mask, BD, CT)
    Cx = _bc_base(C_ptr, FLAGS.c_kind, C_G, b, dim, L, N, offs_d, offs_n, n_mask, dn_mask, BD, CT)
    row = (b * dim + offs_d).to(tl.int64) * L
    zrow = row + b * z_shift
    return (b, c, offs_d, d_mask, offs_n, n_mask, dn_mask, state_off, batch_off, chunk_off, A, Dv,
            dbias, h, Bx, Cx, row, zrow)


@triton.jit
def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, h0_ptr, dout_ptr,
                     out_ptr, last_ptr, P_ptr, S_ptr, Q_ptr,
                     dim, L, N, B_G, C_G, z_shift, chunk_len, n_chunks,
                     FLAGS: tl.constexpr, HAS_H0: tl.constexpr, H0_PER_CHUNK: tl.constexpr,
                     SUMMARY: tl.constexpr, HAS_DOUT: tl.constexpr, BD: tl.constexpr,
                     NP: tl.constexpr, CT: tl.constexpr):
    """Walks chunk program_id(2) of the rows.  SUMMARY: writes the chunk's decay product P, its end
    state S from a zero start and (HAS_DOUT) Q = sum_t P_t C_t dy_t with P_t the product up to
    step t; else the outputs (and the last state, from the last chunk)."""
    (b, c, offs_d, d_mask, offs_n, n_mask, dn_mask, state_off, batch_off, chunk_off, A, Dv, dbias, h,
     Bx, Cx, row, zrow) = _program(A_ptr, B_ptr, C_ptr, D_ptr, db_ptr, h0_ptr, dim, L, N, B_G, C_G,
                                   z_shift, n_chunks, FLAGS, HAS_H0, H0_PER_CHUNK, BD, NP, CT)
    P = tl.full((BD, NP), 1.0, dtype=CT)
    Q = tl.zeros((BD, NP), dtype=CT)
    for p in range(c * chunk_len, tl.minimum(c * chunk_len + chunk_len, L)):
        idx = step_addr(p, L, FLAGS.reverse)
        u, _, dt = _step_in(u_ptr, delta_ptr, row, idx, d_mask, dbias, FLAGS, CT)
        Bt = _bc_at(Bx, FLAGS.b_kind, n_mask, idx, CT)
        a = tl.exp(dt[:, None] * A)
        h = a * h + (dt * u)[:, None] * Bt
        if SUMMARY:
            P = P * a
            if HAS_DOUT:
                dy = tl.load(dout_ptr + row + idx, mask=d_mask, other=0.0).to(CT)
                if FLAGS.has_z:
                    silu_z, _ = _gate(z_ptr, zrow, idx, d_mask, CT)
                    dy = dy * silu_z
                Q += P * _bc_at(Cx, FLAGS.c_kind, n_mask, idx, CT) * dy[:, None]
        else:
            y = tl.sum(h * _bc_at(Cx, FLAGS.c_kind, n_mask, idx, CT), axis=1) + Dv * u
            if FLAGS.has_z:
                silu_z, _ = _gate(z_ptr, zrow, idx, d_mask, CT)
                y = y * silu_z
            tl.store(out_ptr + row + idx, y.to(out_ptr.dtype.element_ty), mask=d_mask)
    if SUMMARY:
        tl.store(P_ptr + chunk_off, P, mask=dn_mask)
        tl.store(S_ptr + chunk_off, h, mask=dn_mask)
        if HAS_DOUT:
            tl.store(Q_ptr + chunk_off, Q, mask=dn_mask)
    elif c == n_chunks - 1:
        tl.store(last_ptr + batch_off, h, mask=dn_mask)


@triton.jit
def _scan_combine_kernel(P_ptr, S_ptr, init_ptr, H_ptr, final_ptr, n_chunks, DN,
                         HAS_INIT: tl.constexpr, BACKWARD: tl.constexpr, BLOCK: tl.constexpr,
                         CT: tl.constexpr):
    """Walk the chunks in order (last to first with BACKWARD): H[c] = the carry entering chunk c,
    then carry = P[c] * carry + S[c]; final = the carry after every chunk."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < DN
    h = tl.zeros((BLOCK,), dtype=CT)
    if HAS_INIT:
        h = tl.load(init_ptr + b * DN + offs, mask=mask, other=0.0).to(CT)
    for i in range(0, n_chunks):
        if BACKWARD:
            c = n_chunks - 1 - i
        else:
            c = i
        off = (b * n_chunks + c) * DN + offs
        tl.store(H_ptr + off, h, mask=mask)
        h = tl.load(P_ptr + off, mask=mask, other=0.0) * h + tl.load(S_ptr + off, mask=mask, other=0.0)
    tl.store(final_ptr + b * DN + offs, h, mask=mask)


@triton.jit
def _scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, h0_ptr,
                     dout_ptr, qin_ptr, ckpt_ptr, scratch_ptr,
                     du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddb_ptr, dh0_ptr,
                     batch, dim, L, N, B_G, C_G, z_shift, chunk_len, n_chunks,
                     FLAGS: tl.constexpr, HAS_H0: tl.constexpr, HAS_QIN: tl.constexpr,
                     PER_CHUNK: tl.constexpr, SEG: tl.constexpr, BD: tl.constexpr,
                     NP: tl.constexpr, CT: tl.constexpr):
    """Gradients of chunk program_id(2) of the rows, from the state entering the chunk (h0, or per
    chunk) and the adjoint entering its end (dlast_state, or per chunk)."""
    (b, c, offs_d, d_mask, offs_n, n_mask, dn_mask, state_off, batch_off, chunk_off, A, Dv, dbias, h,
     Bx, Cx, row, zrow) = _program(A_ptr, B_ptr, C_ptr, D_ptr, db_ptr, h0_ptr, dim, L, N, B_G, C_G,
                                   z_shift, n_chunks, FLAGS, HAS_H0, PER_CHUNK, BD, NP, CT)
    p_start = c * chunk_len
    p_end = tl.minimum(p_start + chunk_len, L)
    n_seg = tl.cdiv(p_end - p_start, SEG)
    # forward walk: the state entering every segment of the chunk
    ckpt = ckpt_ptr + ((b * n_chunks + c) * tl.cdiv(chunk_len, SEG) * dim) * N
    for s in range(0, n_seg):
        tl.store(ckpt + s * dim * N + state_off, h, mask=dn_mask)
        for p in range(p_start + s * SEG, tl.minimum(p_start + s * SEG + SEG, p_end)):
            idx = step_addr(p, L, FLAGS.reverse)
            u, _, dt = _step_in(u_ptr, delta_ptr, row, idx, d_mask, dbias, FLAGS, CT)
            Bt = _bc_at(Bx, FLAGS.b_kind, n_mask, idx, CT)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt
    tl.debug_barrier()
    # the program's scratch block: slot i holds the state after i steps of the segment
    local = tl.arange(0, BD)[:, None] * NP + offs_n[None, :]
    scratch = scratch_ptr + ((b * n_chunks + c) * tl.num_programs(0) + tl.program_id(0)) * (
        (SEG + 1) * BD * NP)
    # adjoint of the state after the current step, from later steps
    q = _state_in(qin_ptr, HAS_QIN, PER_CHUNK, chunk_off, batch_off, dn_mask, BD, NP, CT)
    dA_acc = tl.zeros((BD, NP), dtype=CT)
    dB_acc = tl.zeros((BD, NP), dtype=CT)
    dC_acc = tl.zeros((BD, NP), dtype=CT)
    dD_acc = tl.zeros((BD,), dtype=CT)
    ddb_acc = tl.zeros((BD,), dtype=CT)
    part = ((tl.program_id(0) * batch + b) * N + offs_n).to(tl.int64) * L  # variable dB/dC rows
    for ss in range(0, n_seg):
        s = n_seg - 1 - ss
        p0 = p_start + s * SEG
        p1 = tl.minimum(p0 + SEG, p_end)
        h = tl.load(ckpt + s * dim * N + state_off, mask=dn_mask, other=0.0)
        tl.store(scratch + local, h)
        for p in range(p0, p1):
            idx = step_addr(p, L, FLAGS.reverse)
            u, _, dt = _step_in(u_ptr, delta_ptr, row, idx, d_mask, dbias, FLAGS, CT)
            Bt = _bc_at(Bx, FLAGS.b_kind, n_mask, idx, CT)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt
            tl.store(scratch + (p - p0 + 1) * BD * NP + local, h)
        tl.debug_barrier()
        # walk back: h holds the state after step p, the slot before it the state entering it
        for pp in range(p0, p1):
            p = p1 - 1 - (pp - p0)
            idx = step_addr(p, L, FLAGS.reverse)
            h_prev = tl.load(scratch + (p - p0) * BD * NP + local)
            u, pre, dt = _step_in(u_ptr, delta_ptr, row, idx, d_mask, dbias, FLAGS, CT)
            Bt = _bc_at(Bx, FLAGS.b_kind, n_mask, idx, CT)
            Ct = _bc_at(Cx, FLAGS.c_kind, n_mask, idx, CT)
            a = tl.exp(dt[:, None] * A)
            dy = tl.load(dout_ptr + row + idx, mask=d_mask, other=0.0).to(CT)
            if FLAGS.has_z:
                silu_z, dsilu = _gate(z_ptr, zrow, idx, d_mask, CT)
                y = tl.sum(h * Ct, axis=1) + Dv * u
                tl.store(dz_ptr + row + idx, (dy * y * dsilu).to(dz_ptr.dtype.element_ty),
                         mask=d_mask)  # dz is contiguous
                dy = dy * silu_z
            g = q + dy[:, None] * Ct  # adjoint of the state after step p
            gB = tl.sum(g * Bt, axis=1)
            gha = g * a * h_prev
            ddt = tl.sum(gha * A, axis=1) + gB * u
            du = gB * dt + Dv * dy
            dA_acc += gha * dt[:, None]
            dD_acc += dy * u
            gdu = g * (dt * u)[:, None]
            hdy = h * dy[:, None]
            if FLAGS.b_kind == 0:
                dB_acc += gdu
            else:
                tl.store(dB_ptr + part + idx, tl.sum(gdu, axis=0), mask=n_mask)
            if FLAGS.c_kind == 0:
                dC_acc += hdy
            else:
                tl.store(dC_ptr + part + idx, tl.sum(hdy, axis=0), mask=n_mask)
            if FLAGS.softplus:
                ddt = ddt / (1.0 + tl.exp(-pre))
            ddt = tl.where(d_mask, ddt, 0.0)
            ddb_acc += ddt
            tl.store(du_ptr + row + idx, du.to(du_ptr.dtype.element_ty), mask=d_mask)
            tl.store(ddelta_ptr + row + idx, ddt.to(ddelta_ptr.dtype.element_ty), mask=d_mask)
            q = g * a
            h = h_prev
        tl.debug_barrier()  # the next segment's walk overwrites the scratch block
    tl.store(dA_ptr + chunk_off, dA_acc, mask=dn_mask)
    if FLAGS.b_kind == 0:
        tl.store(dB_ptr + chunk_off, dB_acc, mask=dn_mask)
    if FLAGS.c_kind == 0:
        tl.store(dC_ptr + chunk_off, dC_acc, mask=dn_mask)
    vec_off = (b * n_chunks + c) * dim + offs_d
    tl.store(dD_ptr + vec_off, dD_acc, mask=d_mask)
    tl.store(ddb_ptr + vec_off, ddb_acc, mask=d_mask)
    if c == 0:
        tl.store(dh0_ptr + batch_off, q, mask=dn_mask)


# ----------------------------------------------------------------------------- host side

@dataclass
class _Plan:
    batch: int
    dim: int
    L: int
    N: int
    NP: int
    BD: int
    n_db: int
    seg: int
    chunk_len: int
    n_chunks: int
    B_kind: int
    C_kind: int
    B_G: int
    C_G: int
    ct: torch.dtype
    tl_ct: object


def _bc_kind(X: Tensor) -> tuple[int, int]:
    if X.dim() == 2:
        return _CONST, 1
    return _VAR, (1 if X.dim() == 3 else X.shape[1])


def _largest_pow2_divisor(n: int, cap: int) -> int:
    bd = 1
    while bd * 2 <= cap and n % (bd * 2) == 0:
        bd *= 2
    return bd


def _chunk_len(programs: int, L: int, cfg: LaunchConfig, sms: int) -> int:
    """Steps per chunk of L (a multiple of cfg.seg): cfg.chunk_len when set, else all of L unless
    the rows leave multiprocessors idle and L is long enough to split (SPLIT)."""
    if cfg.chunk_len is not None:
        return cfg.chunk_len
    seg = cfg.seg
    whole = triton.cdiv(L, seg) * seg
    want = SPLIT["programs_per_sm"] * sms
    least = triton.cdiv(SPLIT["min_steps"], seg) * seg
    if programs >= want or L < 2 * least:
        return whole
    return max(least, triton.cdiv(triton.cdiv(L, triton.cdiv(want, programs)), seg) * seg)


def _plan(u: Tensor, A: Tensor, B: Tensor, C: Tensor, cfg: LaunchConfig) -> _Plan:
    batch, dim, L = u.shape
    N = A.shape[1]
    B_kind, B_G = _bc_kind(B)
    C_kind, C_G = _bc_kind(C)
    BD = min(cfg.block_d, pow2(dim))
    for G in (B_G, C_G):
        if G > 1:  # a block of rows lies inside one group (it reads that group's B_t / C_t)
            BD = _largest_pow2_divisor(dim // G, BD)
    n_db = triton.cdiv(dim, BD)
    chunk_len = _chunk_len(batch * n_db, L, cfg, device_sms(u))
    ct, tl_ct = compute_dtype(u)
    return _Plan(batch, dim, L, N, pow2(N, 2), BD, n_db, cfg.seg, chunk_len, triton.cdiv(L, chunk_len),
                 B_kind, C_kind, B_G, C_G, ct, tl_ct)


def _grid(pl: _Plan) -> tuple:
    return (pl.n_db, pl.batch, pl.n_chunks)


def _consts(pl: _Plan, D, z, delta_bias, delta_softplus, reverse, cfg: LaunchConfig) -> dict:
    flags = _ScanFlags(reverse=bool(reverse), b_kind=pl.B_kind, c_kind=pl.C_kind,
                       softplus=bool(delta_softplus), has_d=D is not None, has_z=z is not None,
                       has_db=delta_bias is not None)
    return dict(FLAGS=flags, BD=pl.BD, NP=pl.NP, CT=pl.tl_ct,
                num_warps=cfg.warps, maxnreg=cfg.max_regs,
                enable_fp_fusion=FP_FUSION)


def _z_rows(z: Optional[Tensor], u: Tensor) -> tuple[Optional[Tensor], int]:
    """z and the shift of its rows from u's (z may be a channel slice with its own batch stride)."""
    if z is None:
        return None, 0
    z, zs = rows(z)
    return z, zs - u.shape[1] * u.shape[2]


def _chunk_starts(pl: _Plan, consts: dict, u, delta, A, B, C, D, z, z_shift, delta_bias,
                  initial_state, dout=None, dlast_state=None):
    """Phases 1-2 of a split L: the state entering every chunk and the last state (given dout:
    the state entering every chunk and the adjoint entering every chunk's end)."""
    shape = (pl.batch, pl.n_chunks, pl.dim, pl.N)
    P, S = u.new_empty(shape, dtype=pl.ct), u.new_empty(shape, dtype=pl.ct)
    Q = u.new_empty(shape, dtype=pl.ct) if dout is not None else None
    _scan_fwd_kernel[_grid(pl)](
        u, delta, A, B, C, D, z, delta_bias, None, dout, None, None, P, S, Q,
        pl.dim, pl.L, pl.N, pl.B_G, pl.C_G, z_shift, pl.chunk_len, pl.n_chunks,
        HAS_H0=False, H0_PER_CHUNK=False, SUMMARY=True, HAS_DOUT=dout is not None, **consts)
    DN = pl.dim * pl.N
    block = min(1024, pow2(DN))
    grid = (triton.cdiv(DN, block), pl.batch)
    opts = dict(BLOCK=block, CT=pl.tl_ct, enable_fp_fusion=FP_FUSION)
    H, last = torch.empty_like(P), u.new_empty((pl.batch, pl.dim, pl.N), dtype=pl.ct)
    _scan_combine_kernel[grid](P, S, initial_state, H, last, pl.n_chunks, DN,
                               HAS_INIT=initial_state is not None, BACKWARD=False, **opts)
    if dout is None:
        return H, last
    Qin, dh0 = torch.empty_like(P), u.new_empty((pl.batch, pl.dim, pl.N), dtype=pl.ct)
    _scan_combine_kernel[grid](P, Q, dlast_state, Qin, dh0, pl.n_chunks, DN,
                               HAS_INIT=dlast_state is not None, BACKWARD=True, **opts)
    return H, Qin


def launch_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                   z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
                   delta_softplus: bool, reverse: bool,
                   config: Optional[LaunchConfig] = None) -> tuple[Tensor, Tensor]:
    """The backend's forward with its kernels launched as ``config`` says (None: CONFIGS["fwd"])."""
    cfg = CONFIGS["fwd"] if config is None else config
    pl = _plan(u, A, B, C, cfg)
    consts = _consts(pl, D, z, delta_bias, delta_softplus, reverse, cfg)
    z, z_shift = _z_rows(z, u)
    out = torch.empty_like(u)
    last = u.new_empty((pl.batch, pl.dim, pl.N), dtype=pl.ct)
    h0, per_chunk = initial_state, False
    if pl.n_chunks > 1:
        h0, _ = _chunk_starts(pl, consts, u, delta, A, B, C, D, z, z_shift, delta_bias, initial_state)
        per_chunk = True
    _scan_fwd_kernel[_grid(pl)](
        u, delta, A, B, C, D, z, delta_bias, h0, None, out, last, None, None, None,
        pl.dim, pl.L, pl.N, pl.B_G, pl.C_G, z_shift, pl.chunk_len, pl.n_chunks,
        HAS_H0=h0 is not None, H0_PER_CHUNK=per_chunk, SUMMARY=False, HAS_DOUT=False, **consts)
    return out, last


def _reduce_bc(part: Tensor, X: Tensor, pl: _Plan, kind: int, G: int) -> Tensor:
    """Sum per-program partials of dB/dC in a fixed order, back to X's shape and dtype."""
    if kind == _CONST:  # (batch, n_chunks, dim, N)
        return part.sum(dim=(0, 1)).to(X.dtype)
    # (n_db, batch, N, L); the blocks of one group are contiguous
    g = part.view(G, pl.n_db // G, pl.batch, pl.N, pl.L).sum(1).permute(1, 0, 2, 3)
    return g.reshape(X.shape).to(X.dtype)


def launch_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
                    delta_softplus: bool, reverse: bool, config: Optional[LaunchConfig] = None):
    """The backend's backward with its kernels launched as ``config`` says (None: CONFIGS["bwd"])."""
    cfg = CONFIGS["bwd"] if config is None else config
    pl = _plan(u, A, B, C, cfg)
    consts = _consts(pl, D, z, delta_bias, delta_softplus, reverse, cfg)
    z, z_shift = _z_rows(z, u)
    h0, qin, per_chunk = initial_state, dlast_state, False
    if pl.n_chunks > 1:
        h0, qin = _chunk_starts(pl, consts, u, delta, A, B, C, D, z, z_shift, delta_bias,
                                initial_state, dout, dlast_state)
        per_chunk = True
    ct = pl.ct
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty(z.shape, dtype=z.dtype, device=z.device) if z is not None else None
    cshape = (pl.batch, pl.n_chunks, pl.dim, pl.N)  # per (batch, chunk, row) partials
    vshape = (pl.n_db, pl.batch, pl.N, pl.L)  # per (block, batch) partials of variable dB / dC
    dA_p = u.new_empty(cshape, dtype=ct)
    dB_p = u.new_empty(cshape if pl.B_kind == _CONST else vshape, dtype=ct)
    dC_p = u.new_empty(cshape if pl.C_kind == _CONST else vshape, dtype=ct)
    dD_p = u.new_empty((pl.batch, pl.n_chunks, pl.dim), dtype=ct)
    ddb_p = torch.empty_like(dD_p)
    dh0 = u.new_empty((pl.batch, pl.dim, pl.N), dtype=ct)
    ckpt = u.new_empty((pl.batch, pl.n_chunks, triton.cdiv(pl.chunk_len, pl.seg), pl.dim, pl.N),
                       dtype=ct)
    scratch = u.new_empty((pl.batch, pl.n_chunks, pl.n_db, pl.seg + 1, pl.BD, pl.NP), dtype=ct)
    _scan_bwd_kernel[_grid(pl)](
        u, delta, A, B, C, D, z, delta_bias, h0, dout, qin, ckpt, scratch,
        du, ddelta, dz, dA_p, dB_p, dC_p, dD_p, ddb_p, dh0,
        pl.batch, pl.dim, pl.L, pl.N, pl.B_G, pl.C_G, z_shift, pl.chunk_len, pl.n_chunks,
        HAS_H0=h0 is not None, HAS_QIN=qin is not None, PER_CHUNK=per_chunk, SEG=pl.seg, **consts)
    dA = dA_p.sum(dim=(0, 1)).to(A.dtype)
    dB = _reduce_bc(dB_p, B, pl, pl.B_kind, pl.B_G)
    dC = _reduce_bc(dC_p, C, pl, pl.C_kind, pl.C_G)
    dD = dD_p.sum(dim=(0, 1)).to(D.dtype) if D is not None else None
    ddb = ddb_p.sum(dim=(0, 1)).to(delta_bias.dtype) if delta_bias is not None else None
    dinit = dh0.to(initial_state.dtype) if initial_state is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, ddb, dinit


# ----------------------------------------------------------------------------- backend entry points

def forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
            z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
            delta_softplus: bool, reverse: bool) -> tuple[Tensor, Tensor]:
    return launch_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse)


def backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
             delta_softplus: bool, reverse: bool):
    return launch_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
                           delta_softplus, reverse)
