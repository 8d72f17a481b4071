"""Triton selective scan (the "triton" backend): forward and backward, no atomics.

Layout of the work: one program per (block of BD channels, batch row, chunk of L).  A program keeps
the (BD, N) state in registers and walks its chunk in time tiles of BT steps; inside a tile the
recurrence h_t = a_t h_{t-1} + b_t is a ``tl.associative_scan`` over the tile's BT steps, so every
load is a coalesced (BD, BT) or (N, BT) tile.  Long sequences at small batch are split into chunks
(three phases): every chunk summarises itself (decay product P, end state S from a zero start), a
sequential pass over chunks turns the summaries into chunk start states, then every chunk runs again
from its true start.  ``reverse=True`` only changes the address of scan step p to L-1-p.

Backward recomputes: chunk start states come from the same three phases; inside a chunk a forward
walk stores one (BD, N) checkpoint per time tile, then a reverse walk over tiles recomputes the
tile's states from its checkpoint and runs the adjoint recurrence g_t = a_{t+1} g_{t+1} + C_t dy_t
(a reverse associative scan).  The adjoint entering each chunk from the future comes from the chunk
summaries too (Q = sum_t prod_{s<=t} a_s * C_t dy_t, combined in reverse chunk order).  Gradients of
weights shared over programs (A, D, delta_bias, constant or variable B/C) are written as
per-program partials and summed in a fixed order afterwards: results are bitwise reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import FLOAT_DTYPES, Capabilities
from ..triton_utils import compute_dtype, device_sms, linear_combine, pow2, rows, softplus

# Test hooks: force the tiling (None = heuristic).  chunk_len must be a multiple of block_t.
TUNE: dict = {"block_d": None, "block_t": None, "chunk_len": None, "bwd_warps": None}
# z may be a channel slice of a bigger tensor (any batch stride): the mixer passes xz[:, d:] as is.
CAPS = Capabilities(dtypes=FLOAT_DTYPES, deterministic=True, row_views=True)

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
def _load_bc(X_ptr, KIND: tl.constexpr, G, b, dim, L, N, first_d, offs_d, d_mask, offs_n, n_mask, idx,
             mn, CT: tl.constexpr):
    """B or C for a tile: constant (KIND 0) as (BD, NP, 1), else the tile's steps of the block's
    group as (1, NP, BT)."""
    if KIND == 0:
        X = tl.load(X_ptr + offs_d[:, None] * N + offs_n[None, :],
                    mask=d_mask[:, None] & n_mask[None, :], other=0.0).to(CT)[:, :, None]
    else:
        g = first_d // (dim // G)
        X = tl.load(X_ptr + ((b * G + g) * N + offs_n)[:, None].to(tl.int64) * L + idx[None, :],
                    mask=mn, other=0.0).to(CT)[None, :, :]
    return X


@triton.jit
def _load_tile(u_ptr, delta_ptr, db_ptr, B_ptr, C_ptr, A, b, dim, L, N, B_G, C_G, offs_d, d_mask,
               offs_n, n_mask, p, p_mask, FLAGS: tl.constexpr, BD: tl.constexpr, CT: tl.constexpr):
    """Load one (BD, BT) tile of the scan inputs at scan steps p; masked steps get a=1, b=0."""
    if FLAGS.reverse:
        idx = L - 1 - p
    else:
        idx = p
    m2 = d_mask[:, None] & p_mask[None, :]
    ptrs = (b * dim + offs_d)[:, None].to(tl.int64) * L + idx[None, :]
    u = tl.load(u_ptr + ptrs, mask=m2, other=0.0).to(CT)
    dt_pre = tl.load(delta_ptr + ptrs, mask=m2, other=0.0).to(CT)
    if FLAGS.has_db:
        dt_pre += tl.load(db_ptr + offs_d, mask=d_mask, other=0.0).to(CT)[:, None]
    if FLAGS.softplus:
        dt = softplus(dt_pre)
    else:
        dt = dt_pre
    dt = tl.where(m2, dt, 0.0)
    first_d = (tl.program_id(0) * BD).to(tl.int64)
    mn = n_mask[:, None] & p_mask[None, :]
    Bt = _load_bc(B_ptr, FLAGS.b_kind, B_G, b, dim, L, N, first_d, offs_d, d_mask, offs_n,
                  n_mask, idx, mn, CT)
    Ct = _load_bc(C_ptr, FLAGS.c_kind, C_G, b, dim, L, N, first_d, offs_d, d_mask, offs_n,
                  n_mask, idx, mn, CT)
    dA = tl.exp(dt[:, None, :] * A[:, :, None])
    dBu = (dt * u)[:, None, :] * Bt
    return idx, ptrs, m2, u, dt_pre, dt, Bt, Ct, dA, dBu


@triton.jit
def _load_state(ptr, HAS: tl.constexpr, PER_CHUNK: tl.constexpr, chunk_off, b, dim, N, state_off,
                dn_mask, BD: tl.constexpr, NP: tl.constexpr, CT: tl.constexpr):
    """A (BD, NP) state block: per (batch, chunk) when PER_CHUNK, else per batch; zeros when absent."""
    x = tl.zeros((BD, NP), dtype=CT)
    if HAS:
        if PER_CHUNK:
            x = tl.load(ptr + chunk_off, mask=dn_mask, other=0.0).to(CT)
        else:
            x = tl.load(ptr + b * dim * N + state_off, mask=dn_mask, other=0.0).to(CT)
    return x


@triton.jit
def _last_col(x, BT: tl.constexpr):
    col = tl.arange(0, BT)[None, None, :]
    return tl.sum(tl.where(col == BT - 1, x, 0.0), axis=2)


@triton.jit
def _gate(y, z_ptr, z_off, ptrs, m2, HAS_Z: tl.constexpr, CT: tl.constexpr):
    """out = y * silu(z); also returns silu(z) and d silu / dz (ones/zeros without z). z's rows
    are u's shifted by z_off (z may be a channel slice with its own batch stride)."""
    if HAS_Z:
        z = tl.load(z_ptr + z_off + ptrs, mask=m2, other=0.0).to(CT)
        sz = 1.0 / (1.0 + tl.exp(-z))
        return y * z * sz, z * sz, sz * (1.0 + z * (1.0 - sz))
    else:
        return y, y * 0.0 + 1.0, y * 0.0


@triton.jit
def _program_states(A_ptr, h0_ptr, dim, N, n_chunks, HAS_H0: tl.constexpr, H0_PER_CHUNK: tl.constexpr,
                    BD: tl.constexpr, NP: tl.constexpr, CT: tl.constexpr):
    """A program's (BD channels, NP states) block of chunk program_id(2), batch program_id(1):
    indices, masks, offsets, A and the state entering the chunk."""
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    offs_d = tl.program_id(0) * BD + tl.arange(0, BD)
    d_mask = offs_d < dim
    offs_n = tl.arange(0, NP)
    n_mask = offs_n < N
    dn_mask = d_mask[:, None] & n_mask[None, :]
    state_off = offs_d[:, None] * N + offs_n[None, :]
    chunk_off = ((b * n_chunks + c) * dim) * N + state_off
    A = tl.load(A_ptr + state_off, mask=dn_mask, other=0.0).to(CT)
    h = _load_state(h0_ptr, HAS_H0, H0_PER_CHUNK, chunk_off, b, dim, N, state_off, dn_mask, BD, NP, CT)
    return b, c, offs_d, d_mask, offs_n, n_mask, dn_mask, state_off, chunk_off, A, h


@triton.jit
def _ss_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, h0_ptr, dout_ptr,
                   out_ptr, last_ptr, P_ptr, S_ptr, Q_ptr,
                   batch, dim, L, N, B_G, C_G, chunk_len, n_chunks, z_shift, FLAGS: tl.constexpr,
                   HAS_H0: tl.constexpr, H0_PER_CHUNK: tl.constexpr, SUMMARY: tl.constexpr,
                   HAS_DOUT: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr,
                   CT: tl.constexpr):
    """SUMMARY: per chunk P = prod a, S = end state from zero (and Q with HAS_DOUT); else outputs."""
    b, c, offs_d, d_mask, offs_n, n_mask, dn_mask, state_off, chunk_off, A, h = _program_states(
        A_ptr, h0_ptr, dim, N, n_chunks, HAS_H0, H0_PER_CHUNK, BD, NP, CT)
    if FLAGS.has_d:
        Dv = tl.load(D_ptr + offs_d, mask=d_mask, other=0.0).to(CT)
    P = tl.full((BD, NP), 1.0, dtype=CT)
    Q = tl.zeros((BD, NP), dtype=CT)
    start = c * chunk_len
    end = tl.minimum(start + chunk_len, L)
    for t0 in range(start, end, BT):
        p = t0 + tl.arange(0, BT)
        p_mask = p < end
        idx, ptrs, m2, u, dt_pre, dt, Bt, Ct, dA, dBu = _load_tile(
            u_ptr, delta_ptr, db_ptr, B_ptr, C_ptr, A, b, dim, L, N, B_G, C_G, offs_d, d_mask,
            offs_n, n_mask, p, p_mask, FLAGS, BD, CT)
        a_cum, b_cum = tl.associative_scan((dA, dBu), 2, linear_combine)
        hs = a_cum * h[:, :, None] + b_cum
        h = _last_col(hs, BT)
        if SUMMARY:
            if HAS_DOUT:
                dout = tl.load(dout_ptr + ptrs, mask=m2, other=0.0).to(CT)
                _, silu_z, _ = _gate(u, z_ptr, b * z_shift, ptrs, m2, FLAGS.has_z, CT)  # silu(z) only
                dout = dout * silu_z
                Q += tl.sum((P[:, :, None] * a_cum) * Ct * dout[:, None, :], axis=2)
            P = P * _last_col(a_cum, BT)
        else:
            y = tl.sum(hs * Ct, axis=1)
            if FLAGS.has_d:
                y += Dv[:, None] * u
            out, _, _ = _gate(y, z_ptr, b * z_shift, ptrs, m2, FLAGS.has_z, CT)
            tl.store(out_ptr + ptrs, out.to(out_ptr.dtype.element_ty), mask=m2)
    if SUMMARY:
        tl.store(P_ptr + chunk_off, P, mask=dn_mask)
        tl.store(S_ptr + chunk_off, h, mask=dn_mask)
        if HAS_DOUT:
            tl.store(Q_ptr + chunk_off, Q, mask=dn_mask)
    else:
        tl.store(last_ptr + b * dim * N + state_off, h, mask=dn_mask & (state_off * 0 + c == n_chunks - 1))


@triton.jit
def _ss_combine_kernel(P_ptr, S_ptr, init_ptr, H_ptr, final_ptr, n_chunks, DN,
                       HAS_INIT: tl.constexpr, BACKWARD: tl.constexpr, BLOCK: tl.constexpr,
                       CT: tl.constexpr):
    """Walk the chunks in order (reverse order with BACKWARD): H[c] = carry into chunk c."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < DN
    h = tl.zeros((BLOCK,), dtype=CT)
    if HAS_INIT:
        h = tl.load(init_ptr + b * DN + offs, mask=mask, other=0.0).to(CT)
    for i in range(n_chunks):
        if BACKWARD:
            c = n_chunks - 1 - i
        else:
            c = i
        off = (b * n_chunks + c) * DN + offs
        tl.store(H_ptr + off, h, mask=mask)
        h = tl.load(P_ptr + off, mask=mask, other=0.0) * h + tl.load(S_ptr + off, mask=mask, other=0.0)
    tl.store(final_ptr + b * DN + offs, h, mask=mask)


@triton.jit
def _ss_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, h0_ptr, qin_ptr,
                   dout_ptr, ckpt_ptr,
                   du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, ddb_ptr, dB_ptr, dC_ptr, dh0_ptr,
                   batch, dim, L, N, B_G, C_G, chunk_len, n_chunks, n_tiles, z_shift,
                   FLAGS: tl.constexpr, HAS_H0: tl.constexpr, H0_PER_CHUNK: tl.constexpr,
                   HAS_QIN: tl.constexpr, QIN_PER_CHUNK: tl.constexpr,
                   BD: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, CT: tl.constexpr):
    b, c, offs_d, d_mask, offs_n, n_mask, dn_mask, state_off, chunk_off, A, h = _program_states(
        A_ptr, h0_ptr, dim, N, n_chunks, HAS_H0, H0_PER_CHUNK, BD, NP, CT)
    # adjoint of the state at the chunk end, from later steps
    q = _load_state(qin_ptr, HAS_QIN, QIN_PER_CHUNK, chunk_off, b, dim, N, state_off, dn_mask, BD, NP, CT)
    if FLAGS.has_d:
        Dv = tl.load(D_ptr + offs_d, mask=d_mask, other=0.0).to(CT)
    start = c * chunk_len
    end = tl.minimum(start + chunk_len, L)
    n_local = tl.cdiv(end - start, BT)
    # forward walk: one state checkpoint per time tile
    for k in range(0, n_local):
        t0 = start + k * BT
        p = t0 + tl.arange(0, BT)
        p_mask = p < end
        tl.store(ckpt_ptr + ((b * n_tiles + t0 // BT) * dim) * N + state_off, h, mask=dn_mask)
        _, _, _, _, _, _, _, _, dA, dBu = _load_tile(
            u_ptr, delta_ptr, db_ptr, B_ptr, C_ptr, A, b, dim, L, N, B_G, C_G, offs_d, d_mask,
            offs_n, n_mask, p, p_mask, FLAGS, BD, CT)
        a_cum, b_cum = tl.associative_scan((dA, dBu), 2, linear_combine)
        h = _last_col(a_cum * h[:, :, None] + b_cum, BT)
    dA_acc = tl.zeros((BD, NP), dtype=CT)
    dBc_acc = tl.zeros((BD, NP), dtype=CT)
    dCc_acc = tl.zeros((BD, NP), dtype=CT)
    dD_acc = tl.zeros((BD,), dtype=CT)
    ddb_acc = tl.zeros((BD,), dtype=CT)
    col = tl.arange(0, BT)
    # reverse walk over tiles
    for kk in range(0, n_local):
        t0 = start + (n_local - 1 - kk) * BT
        p = t0 + col
        p_mask = p < end
        h_start = tl.load(ckpt_ptr + ((b * n_tiles + t0 // BT) * dim) * N + state_off,
                          mask=dn_mask, other=0.0)
        idx, ptrs, m2, u, dt_pre, dt, Bt, Ct, dA, dBu = _load_tile(
            u_ptr, delta_ptr, db_ptr, B_ptr, C_ptr, A, b, dim, L, N, B_G, C_G, offs_d, d_mask,
            offs_n, n_mask, p, p_mask, FLAGS, BD, CT)
        a_cum, b_cum = tl.associative_scan((dA, dBu), 2, linear_combine)
        hs = a_cum * h_start[:, :, None] + b_cum
        y = tl.sum(hs * Ct, axis=1)
        if FLAGS.has_d:
            y += Dv[:, None] * u
        dout = tl.load(dout_ptr + ptrs, mask=m2, other=0.0).to(CT)
        _, silu_z, dsilu = _gate(y, z_ptr, b * z_shift, ptrs, m2, FLAGS.has_z, CT)
        if FLAGS.has_z:
            tl.store(dz_ptr + ptrs, (dout * y * dsilu).to(dz_ptr.dtype.element_ty), mask=m2)
        dy = dout * silu_z
        # a_{t+1} inside the tile (the last step's successor is the carry q): reload delta at p+1
        _, _, _, _, _, _, _, _, dA_next, _ = _load_tile(
            u_ptr, delta_ptr, db_ptr, B_ptr, C_ptr, A, b, dim, L, N, B_G, C_G, offs_d, d_mask,
            offs_n, n_mask, p + 1, (p + 1 < end) & (col < BT - 1), FLAGS, BD, CT)
        g_a, g_b = tl.associative_scan((dA_next, Ct * dy[:, None, :]), 2, linear_combine,
                                       reverse=True)
        g = g_a * q[:, :, None] + g_b
        q = tl.sum(tl.where(col[None, None, :] == 0, dA * g, 0.0), axis=2)
        gh = g * (hs - dBu)  # g_t * a_t * h_{t-1}
        gB = g * Bt
        ddt = tl.sum(gh * A[:, :, None], axis=1) + tl.sum(gB, axis=1) * u
        du = tl.sum(gB, axis=1) * dt
        if FLAGS.has_d:
            du += Dv[:, None] * dy
            dD_acc += tl.sum(dy * u, axis=1)
        dA_acc += tl.sum(gh * dt[:, None, :], axis=2)
        gdtu = g * (dt * u)[:, None, :]
        hdy = hs * dy[:, None, :]
        if FLAGS.b_kind == 0:
            dBc_acc += tl.sum(gdtu, axis=2)
        else:
            dB_off = ((tl.program_id(0) * batch + b) * N + offs_n)[:, None].to(tl.int64) * L + idx[None, :]
            tl.store(dB_ptr + dB_off, tl.sum(gdtu, axis=0), mask=n_mask[:, None] & p_mask[None, :])
        if FLAGS.c_kind == 0:
            dCc_acc += tl.sum(hdy, axis=2)
        else:
            dC_off = ((tl.program_id(0) * batch + b) * N + offs_n)[:, None].to(tl.int64) * L + idx[None, :]
            tl.store(dC_ptr + dC_off, tl.sum(hdy, axis=0), mask=n_mask[:, None] & p_mask[None, :])
        if FLAGS.softplus:
            ddt = ddt / (1.0 + tl.exp(-dt_pre))
        ddt = tl.where(m2, ddt, 0.0)
        ddb_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + ptrs, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddelta_ptr + ptrs, ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
    tl.store(dA_ptr + chunk_off, dA_acc, mask=dn_mask)
    if FLAGS.b_kind == 0:
        tl.store(dB_ptr + chunk_off, dBc_acc, mask=dn_mask)
    if FLAGS.c_kind == 0:
        tl.store(dC_ptr + chunk_off, dCc_acc, mask=dn_mask)
    vec_off = (b * n_chunks + c) * dim + offs_d
    tl.store(dD_ptr + vec_off, dD_acc, mask=d_mask)
    tl.store(ddb_ptr + vec_off, ddb_acc, mask=d_mask)
    tl.store(dh0_ptr + b * dim * N + state_off, q, mask=dn_mask & (state_off * 0 + c == 0))


# ----------------------------------------------------------------------------- host side

@dataclass
class _Plan:
    batch: int
    dim: int
    L: int
    N: int
    NP: int
    BD: int
    BT: int
    chunk_len: int
    n_chunks: int
    n_tiles: int
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


def _plan(u: Tensor, A: Tensor, B: Tensor, C: Tensor) -> _Plan:
    batch, dim, L = u.shape
    N = A.shape[1]
    NP = pow2(N, 2)
    B_kind, B_G = _bc_kind(B)
    C_kind, C_G = _bc_kind(C)
    BT = TUNE["block_t"] or min(32, pow2(L, 2))
    BD = TUNE["block_d"] or max(1, min(pow2(dim), 2048 // (NP * BT), 16))
    for G in (B_G, C_G):
        if G > 1:  # a block of channels must lie inside one group
            BD = _largest_pow2_divisor(dim // G, BD)
    n_db = triton.cdiv(dim, BD)
    chunk_len = TUNE["chunk_len"]
    if chunk_len is None:
        programs = batch * n_db
        want = 4 * device_sms(u)
        if programs >= want or L <= 8 * BT:
            chunk_len = triton.cdiv(L, BT) * BT
        else:
            splits = triton.cdiv(want, programs)
            chunk_len = max(8 * BT, triton.cdiv(triton.cdiv(L, splits), BT) * BT)
    if chunk_len % BT:
        raise ValueError(f"chunk_len={chunk_len} must be a multiple of block_t={BT}")
    ct, tl_ct = compute_dtype(u)
    return _Plan(batch, dim, L, N, NP, BD, BT, chunk_len, triton.cdiv(L, chunk_len),
                 triton.cdiv(L, BT), B_kind, C_kind, B_G, C_G, ct, tl_ct)


def _grid(pl: _Plan):
    return (triton.cdiv(pl.dim, pl.BD), pl.batch, pl.n_chunks)


def _flags(pl: _Plan, D, z, delta_bias, delta_softplus, reverse) -> dict:
    flags = _ScanFlags(reverse=bool(reverse), b_kind=pl.B_kind, c_kind=pl.C_kind,
                      softplus=bool(delta_softplus), has_d=D is not None, has_z=z is not None,
                      has_db=delta_bias is not None)
    return dict(FLAGS=flags, BD=pl.BD, NP=pl.NP, BT=pl.BT, CT=pl.tl_ct)


def _bwd_warps(pl: _Plan) -> int:
    """The backward keeps ~a dozen (BD, NP, BT) tiles live: at the default tiling (2048 elements,
    16 a thread with 4 warps) it needs over 255 registers and spills, so big tiles get 8 warps
    (scripts/check_triton_compile.py).  Small tiles keep Triton's default of 4."""
    return TUNE["bwd_warps"] or (8 if pl.BD * pl.NP * pl.BT > 1024 else 4)


def _z_rows(z: Optional[Tensor], u: Tensor) -> tuple[Optional[Tensor], int]:
    """z and the shift of its rows from u's (z may be a channel slice with its own batch stride)."""
    if z is None:
        return None, 0
    z, zs = rows(z)
    return z, zs - u.shape[1] * u.shape[2]


def _chunk_starts(pl: _Plan, flags, u, delta, A, B, C, D, z, z_shift, delta_bias, initial_state,
                  dout=None, dlast_state=None):
    """Phases 1-2: chunk start states (and, given dout, the adjoints entering every chunk end)."""
    shape = (pl.batch, pl.n_chunks, pl.dim, pl.N)
    P, S = u.new_empty(shape, dtype=pl.ct), u.new_empty(shape, dtype=pl.ct)
    Q = u.new_empty(shape, dtype=pl.ct) if dout is not None else P
    _ss_fwd_kernel[_grid(pl)](
        u, delta, A, B, C, D, z, delta_bias, u, dout, u, u, P, S, Q,
        pl.batch, pl.dim, pl.L, pl.N, pl.B_G, pl.C_G, pl.chunk_len, pl.n_chunks, z_shift,
        HAS_H0=False, H0_PER_CHUNK=False, SUMMARY=True, HAS_DOUT=dout is not None, **flags)
    DN = pl.dim * pl.N
    block = min(1024, pow2(DN))
    grid = (triton.cdiv(DN, block), pl.batch)
    H = torch.empty_like(P)
    last = u.new_empty((pl.batch, pl.dim, pl.N), dtype=pl.ct)
    _ss_combine_kernel[grid](P, S, initial_state, H, last, pl.n_chunks, DN,
                             HAS_INIT=initial_state is not None, BACKWARD=False, BLOCK=block,
                             CT=pl.tl_ct)
    if dout is None:
        return H, last
    Qin = torch.empty_like(P)
    dh0 = u.new_empty((pl.batch, pl.dim, pl.N), dtype=pl.ct)
    _ss_combine_kernel[grid](P, Q, dlast_state, Qin, dh0, pl.n_chunks, DN,
                             HAS_INIT=dlast_state is not None, BACKWARD=True, BLOCK=block,
                             CT=pl.tl_ct)
    return H, Qin


def forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
            z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
            delta_softplus: bool, reverse: bool) -> tuple[Tensor, Tensor]:
    pl = _plan(u, A, B, C)
    flags = _flags(pl, D, z, delta_bias, delta_softplus, reverse)
    z, z_shift = _z_rows(z, u)
    out = torch.empty_like(u)
    last = u.new_empty((pl.batch, pl.dim, pl.N), dtype=pl.ct)
    h0, per_chunk = initial_state, False
    if pl.n_chunks > 1:
        h0, _ = _chunk_starts(pl, flags, u, delta, A, B, C, D, z, z_shift, delta_bias, initial_state)
        per_chunk = True
    _ss_fwd_kernel[_grid(pl)](
        u, delta, A, B, C, D, z, delta_bias, h0, u, out, last, u, u, u,
        pl.batch, pl.dim, pl.L, pl.N, pl.B_G, pl.C_G, pl.chunk_len, pl.n_chunks, z_shift,
        HAS_H0=h0 is not None, H0_PER_CHUNK=per_chunk, SUMMARY=False, HAS_DOUT=False, **flags)
    return out, last


def _reduce_bc(part: Tensor, X: Tensor, pl: _Plan, kind: int, G: int) -> Tensor:
    """Sum per-program partials of dB/dC in a fixed order, back to X's shape and dtype."""
    if kind == _CONST:  # (batch, n_chunks, dim, N)
        return part.sum(dim=(0, 1)).to(X.dtype)
    n_db = part.shape[0]  # (n_db, batch, N, L); the blocks of one group are contiguous
    g = part.view(G, n_db // G, pl.batch, pl.N, pl.L).sum(1).permute(1, 0, 2, 3)
    return g.reshape(X.shape).to(X.dtype)


def backward(u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state,
             delta_softplus: bool, reverse: bool):
    pl = _plan(u, A, B, C)
    flags = _flags(pl, D, z, delta_bias, delta_softplus, reverse)
    z, z_shift = _z_rows(z, u)
    h0, qin, per_chunk = initial_state, dlast_state, False
    if pl.n_chunks > 1:
        h0, qin = _chunk_starts(pl, flags, u, delta, A, B, C, D, z, z_shift, delta_bias,
                                initial_state, dout, dlast_state)
        per_chunk = True
    n_db = triton.cdiv(pl.dim, pl.BD)
    ct = pl.ct
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty(z.shape, dtype=z.dtype, device=z.device) if z is not None else None
    cshape = (pl.batch, pl.n_chunks, pl.dim, pl.N)
    vshape = (n_db, pl.batch, pl.N, pl.L)
    dA_p = u.new_empty(cshape, dtype=ct)
    dB_p = u.new_empty(cshape if pl.B_kind == _CONST else vshape, dtype=ct)
    dC_p = u.new_empty(cshape if pl.C_kind == _CONST else vshape, dtype=ct)
    dD_p = u.new_empty((pl.batch, pl.n_chunks, pl.dim), dtype=ct)
    ddb_p = torch.empty_like(dD_p)
    dh0 = u.new_empty((pl.batch, pl.dim, pl.N), dtype=ct)
    ckpt = u.new_empty((pl.batch, pl.n_tiles, pl.dim, pl.N), dtype=ct)
    _ss_bwd_kernel[_grid(pl)](
        u, delta, A, B, C, D, z, delta_bias, h0, qin, dout, ckpt,
        du, ddelta, dz, dA_p, dD_p, ddb_p, dB_p, dC_p, dh0,
        pl.batch, pl.dim, pl.L, pl.N, pl.B_G, pl.C_G, pl.chunk_len, pl.n_chunks, pl.n_tiles, z_shift,
        HAS_H0=h0 is not None, H0_PER_CHUNK=per_chunk, HAS_QIN=qin is not None,
        QIN_PER_CHUNK=per_chunk, num_warps=_bwd_warps(pl), **flags)
    dA = dA_p.sum(dim=(0, 1)).to(A.dtype)
    dB = _reduce_bc(dB_p, B, pl, pl.B_kind, pl.B_G)
    dC = _reduce_bc(dC_p, C, pl, pl.C_kind, pl.C_G)
    dD = dD_p.sum(dim=(0, 1)).to(D.dtype) if D is not None else None
    ddb = ddb_p.sum(dim=(0, 1)).to(delta_bias.dtype) if delta_bias is not None else None
    dinit = dh0.to(initial_state.dtype) if initial_state is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, ddb, dinit
