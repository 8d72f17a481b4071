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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities
from ..triton_utils import FP_FUSION, compute_dtype, pow2, rows, softplus

# z may be a channel slice of a bigger tensor (any batch stride): the mixer passes xz[:, d:] as is.
CAPS = Capabilities(dtypes=FLOAT_DTYPES, deterministic=True, row_views=True)


@dataclass(frozen=True)
class LaunchConfig:
    block_d: int  # rows (channels) per program, a power of two
    warps: int
    seg: int = 0  # backward: steps between state checkpoints (the recompute segment)
    max_regs: Optional[int] = None  # registers a thread may use (None: ptxas's choice, which may
    # spill to raise occupancy: ptxas 13 spills the backward at 80 / 96 / 128 registers)


# The launch configuration of each kernel.  BLOCK_D shrinks to fit dim (and to divide dim / G
# with grouped B/C); TUNE overrides single fields (tests, tools/gpu/tune_triton).
CONFIGS = {
    "fwd": LaunchConfig(block_d=32, warps=4),
    "bwd": LaunchConfig(block_d=32, warps=4, seg=32, max_regs=255),
}
TUNE: dict = {"block_d": None, "seg": None, "fwd_warps": None, "bwd_warps": None}

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
def _rows(A_ptr, D_ptr, db_ptr, dim, N, FLAGS: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
          CT: tl.constexpr):
    """The program's block: BD rows from program_id(0) * BD of batch element program_id(1), the
    rows' A (BD, NP), D and delta_bias (BD,) (zeros when absent)."""
    b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BD + tl.arange(0, BD)
    d_mask = offs_d < dim
    offs_n = tl.arange(0, NP)
    n_mask = offs_n < N
    dn_mask = d_mask[:, None] & n_mask[None, :]
    state_off = offs_d[:, None] * N + offs_n[None, :]
    A = tl.load(A_ptr + state_off, mask=dn_mask, other=0.0).to(CT)
    Dv = tl.zeros((BD,), dtype=CT)
    if FLAGS.has_d:
        Dv = tl.load(D_ptr + offs_d, mask=d_mask, other=0.0).to(CT)
    dbias = tl.zeros((BD,), dtype=CT)
    if FLAGS.has_db:
        dbias = tl.load(db_ptr + offs_d, mask=d_mask, other=0.0).to(CT)
    return b, offs_d, d_mask, offs_n, n_mask, dn_mask, state_off, A, Dv, dbias


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
def _addr(p, L, REVERSE: tl.constexpr):
    """Address of scan step p."""
    if REVERSE:
        return L - 1 - p
    else:
        return p


@triton.jit
def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, h0_ptr,
                     out_ptr, last_ptr, dim, L, N, B_G, C_G, z_shift,
                     FLAGS: tl.constexpr, HAS_H0: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                     CT: tl.constexpr):
    b, offs_d, d_mask, offs_n, n_mask, dn_mask, state_off, A, Dv, dbias = _rows(
        A_ptr, D_ptr, db_ptr, dim, N, FLAGS, BD, NP, CT)
    Bx = _bc_base(B_ptr, FLAGS.b_kind, B_G, b, dim, L, N, offs_d, offs_n, n_mask, dn_mask, BD, CT)
    Cx = _bc_base(C_ptr, FLAGS.c_kind, C_G, b, dim, L, N, offs_d, offs_n, n_mask, dn_mask, BD, CT)
    h = tl.zeros((BD, NP), dtype=CT)
    if HAS_H0:
        h = tl.load(h0_ptr + b * dim * N + state_off, mask=dn_mask, other=0.0).to(CT)
    row = (b * dim + offs_d).to(tl.int64) * L
    for p in range(0, L):
        idx = _addr(p, L, FLAGS.reverse)
        u, _, dt = _step_in(u_ptr, delta_ptr, row, idx, d_mask, dbias, FLAGS, CT)
        Bt = _bc_at(Bx, FLAGS.b_kind, n_mask, idx, CT)
        Ct = _bc_at(Cx, FLAGS.c_kind, n_mask, idx, CT)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt
        y = tl.sum(h * Ct, axis=1) + Dv * u
        if FLAGS.has_z:
            z = tl.load(z_ptr + b * z_shift + row + idx, mask=d_mask, other=0.0).to(CT)
            y = y * z / (1.0 + tl.exp(-z))
        tl.store(out_ptr + row + idx, y.to(out_ptr.dtype.element_ty), mask=d_mask)
    tl.store(last_ptr + b * dim * N + state_off, h, mask=dn_mask)


@triton.jit
def _scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, h0_ptr,
                     dout_ptr, dlast_ptr, ckpt_ptr, scratch_ptr,
                     du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddb_ptr, dh0_ptr,
                     batch, dim, L, N, B_G, C_G, z_shift, n_seg,
                     FLAGS: tl.constexpr, HAS_H0: tl.constexpr, HAS_DLAST: tl.constexpr,
                     SEG: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, CT: tl.constexpr):
    b, offs_d, d_mask, offs_n, n_mask, dn_mask, state_off, A, Dv, dbias = _rows(
        A_ptr, D_ptr, db_ptr, dim, N, FLAGS, BD, NP, CT)
    Bx = _bc_base(B_ptr, FLAGS.b_kind, B_G, b, dim, L, N, offs_d, offs_n, n_mask, dn_mask, BD, CT)
    Cx = _bc_base(C_ptr, FLAGS.c_kind, C_G, b, dim, L, N, offs_d, offs_n, n_mask, dn_mask, BD, CT)
    row = (b * dim + offs_d).to(tl.int64) * L
    zrow = row + b * z_shift
    h = tl.zeros((BD, NP), dtype=CT)
    if HAS_H0:
        h = tl.load(h0_ptr + b * dim * N + state_off, mask=dn_mask, other=0.0).to(CT)
    # forward walk: the state entering every segment
    ckpt = ckpt_ptr + (b * n_seg * dim) * N  # (n_seg, dim, N) states of the batch element
    for s in range(0, n_seg):
        tl.store(ckpt + s * dim * N + state_off, h, mask=dn_mask)
        for p in range(s * SEG, tl.minimum(s * SEG + SEG, L)):
            idx = _addr(p, L, FLAGS.reverse)
            u, _, dt = _step_in(u_ptr, delta_ptr, row, idx, d_mask, dbias, FLAGS, CT)
            Bt = _bc_at(Bx, FLAGS.b_kind, n_mask, idx, CT)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt
    tl.debug_barrier()
    # the program's scratch block: slot i holds the state after i steps of the segment
    local = tl.arange(0, BD)[:, None] * NP + offs_n[None, :]
    scratch = scratch_ptr + (b * tl.num_programs(0) + tl.program_id(0)) * ((SEG + 1) * BD * NP)
    q = tl.zeros((BD, NP), dtype=CT)  # adjoint of the state after the current step, from later steps
    if HAS_DLAST:
        q = tl.load(dlast_ptr + b * dim * N + state_off, mask=dn_mask, other=0.0).to(CT)
    dA_acc = tl.zeros((BD, NP), dtype=CT)
    dB_acc = tl.zeros((BD, NP), dtype=CT)
    dC_acc = tl.zeros((BD, NP), dtype=CT)
    dD_acc = tl.zeros((BD,), dtype=CT)
    ddb_acc = tl.zeros((BD,), dtype=CT)
    part = ((tl.program_id(0) * batch + b) * N + offs_n).to(tl.int64) * L  # variable dB/dC rows
    for ss in range(0, n_seg):
        s = n_seg - 1 - ss
        p0 = s * SEG
        p1 = tl.minimum(p0 + SEG, L)
        h = tl.load(ckpt + s * dim * N + state_off, mask=dn_mask, other=0.0)
        tl.store(scratch + local, h)
        for p in range(p0, p1):
            idx = _addr(p, L, FLAGS.reverse)
            u, _, dt = _step_in(u_ptr, delta_ptr, row, idx, d_mask, dbias, FLAGS, CT)
            Bt = _bc_at(Bx, FLAGS.b_kind, n_mask, idx, CT)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt
            tl.store(scratch + (p - p0 + 1) * BD * NP + local, h)
        tl.debug_barrier()
        # walk back: h holds the state after step p, the slot before it the state entering it
        for pp in range(p0, p1):
            p = p1 - 1 - (pp - p0)
            idx = _addr(p, L, FLAGS.reverse)
            h_prev = tl.load(scratch + (p - p0) * BD * NP + local)
            u, pre, dt = _step_in(u_ptr, delta_ptr, row, idx, d_mask, dbias, FLAGS, CT)
            Bt = _bc_at(Bx, FLAGS.b_kind, n_mask, idx, CT)
            Ct = _bc_at(Cx, FLAGS.c_kind, n_mask, idx, CT)
            a = tl.exp(dt[:, None] * A)
            dy = tl.load(dout_ptr + row + idx, mask=d_mask, other=0.0).to(CT)
            if FLAGS.has_z:
                y = tl.sum(h * Ct, axis=1) + Dv * u
                z = tl.load(z_ptr + zrow + idx, mask=d_mask, other=0.0).to(CT)
                sz = 1.0 / (1.0 + tl.exp(-z))
                tl.store(dz_ptr + row + idx, (dy * y * sz * (1.0 + z * (1.0 - sz))).to(
                    dz_ptr.dtype.element_ty), mask=d_mask)  # dz is contiguous
                dy = dy * z * sz
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
    part_dn = b * dim * N + state_off
    tl.store(dA_ptr + part_dn, dA_acc, mask=dn_mask)
    if FLAGS.b_kind == 0:
        tl.store(dB_ptr + part_dn, dB_acc, mask=dn_mask)
    if FLAGS.c_kind == 0:
        tl.store(dC_ptr + part_dn, dC_acc, mask=dn_mask)
    tl.store(dD_ptr + b * dim + offs_d, dD_acc, mask=d_mask)
    tl.store(ddb_ptr + b * dim + offs_d, ddb_acc, mask=d_mask)
    tl.store(dh0_ptr + part_dn, q, mask=dn_mask)


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


def _plan(u: Tensor, A: Tensor, B: Tensor, C: Tensor, which: str) -> _Plan:
    batch, dim, L = u.shape
    N = A.shape[1]
    B_kind, B_G = _bc_kind(B)
    C_kind, C_G = _bc_kind(C)
    BD = min(TUNE["block_d"] or CONFIGS[which].block_d, pow2(dim))
    for G in (B_G, C_G):
        if G > 1:  # a block of rows lies inside one group (it reads that group's B_t / C_t)
            BD = _largest_pow2_divisor(dim // G, BD)
    ct, tl_ct = compute_dtype(u)
    return _Plan(batch, dim, L, N, pow2(N, 2), BD, triton.cdiv(dim, BD), B_kind, C_kind, B_G, C_G,
                 ct, tl_ct)


def _consts(pl: _Plan, D, z, delta_bias, delta_softplus, reverse, which: str) -> dict:
    cfg = CONFIGS[which]
    flags = _ScanFlags(reverse=bool(reverse), b_kind=pl.B_kind, c_kind=pl.C_kind,
                       softplus=bool(delta_softplus), has_d=D is not None, has_z=z is not None,
                       has_db=delta_bias is not None)
    return dict(FLAGS=flags, BD=pl.BD, NP=pl.NP, CT=pl.tl_ct,
                num_warps=TUNE[f"{which}_warps"] or cfg.warps, maxnreg=cfg.max_regs,
                enable_fp_fusion=FP_FUSION)


def _z_rows(z: Optional[Tensor], u: Tensor) -> tuple[Optional[Tensor], int]:
    """z and the shift of its rows from u's (z may be a channel slice with its own batch stride)."""
    if z is None:
        return None, 0
    z, zs = rows(z)
    return z, zs - u.shape[1] * u.shape[2]


def forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
            z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
            delta_softplus: bool, reverse: bool) -> tuple[Tensor, Tensor]:
    pl = _plan(u, A, B, C, "fwd")
    consts = _consts(pl, D, z, delta_bias, delta_softplus, reverse, "fwd")
    z, z_shift = _z_rows(z, u)
    out = torch.empty_like(u)
    last = u.new_empty((pl.batch, pl.dim, pl.N), dtype=pl.ct)
    _scan_fwd_kernel[(pl.n_db, pl.batch)](
        u, delta, A, B, C, D, z, delta_bias, initial_state, out, last,
        pl.dim, pl.L, pl.N, pl.B_G, pl.C_G, z_shift, HAS_H0=initial_state is not None, **consts)
    return out, last


def _reduce_bc(part: Tensor, X: Tensor, pl: _Plan, kind: int, G: int) -> Tensor:
    """Sum per-program partials of dB/dC in a fixed order, back to X's shape and dtype."""
    if kind == _CONST:  # (batch, dim, N)
        return part.sum(dim=0).to(X.dtype)
    # (n_db, batch, N, L); the blocks of one group are contiguous
    g = part.view(G, pl.n_db // G, pl.batch, pl.N, pl.L).sum(1).permute(1, 0, 2, 3)
    return g.reshape(X.shape).to(X.dtype)


def backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
             delta_softplus: bool, reverse: bool):
    pl = _plan(u, A, B, C, "bwd")
    consts = _consts(pl, D, z, delta_bias, delta_softplus, reverse, "bwd")
    seg = TUNE["seg"] or CONFIGS["bwd"].seg
    n_seg = triton.cdiv(pl.L, seg)
    z, z_shift = _z_rows(z, u)
    ct = pl.ct
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty(z.shape, dtype=z.dtype, device=z.device) if z is not None else None
    rshape = (pl.batch, pl.dim, pl.N)  # per (batch, row) partials
    vshape = (pl.n_db, pl.batch, pl.N, pl.L)  # per (block, batch) partials of variable dB / dC
    dA_p = u.new_empty(rshape, dtype=ct)
    dB_p = u.new_empty(rshape if pl.B_kind == _CONST else vshape, dtype=ct)
    dC_p = u.new_empty(rshape if pl.C_kind == _CONST else vshape, dtype=ct)
    dD_p = u.new_empty((pl.batch, pl.dim), dtype=ct)
    ddb_p = torch.empty_like(dD_p)
    dh0 = u.new_empty(rshape, dtype=ct)
    ckpt = u.new_empty((pl.batch, n_seg, pl.dim, pl.N), dtype=ct)
    scratch = u.new_empty((pl.batch, pl.n_db, seg + 1, pl.BD, pl.NP), dtype=ct)
    _scan_bwd_kernel[(pl.n_db, pl.batch)](
        u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state, ckpt, scratch,
        du, ddelta, dz, dA_p, dB_p, dC_p, dD_p, ddb_p, dh0,
        pl.batch, pl.dim, pl.L, pl.N, pl.B_G, pl.C_G, z_shift, n_seg,
        HAS_H0=initial_state is not None, HAS_DLAST=dlast_state is not None, SEG=seg, **consts)
    dA = dA_p.sum(dim=0).to(A.dtype)
    dB = _reduce_bc(dB_p, B, pl, pl.B_kind, pl.B_G)
    dC = _reduce_bc(dC_p, C, pl, pl.C_kind, pl.C_G)
    dD = dD_p.sum(dim=0).to(D.dtype) if D is not None else None
    ddb = ddb_p.sum(dim=0).to(delta_bias.dtype) if delta_bias is not None else None
    dinit = dh0.to(initial_state.dtype) if initial_state is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, ddb, dinit
