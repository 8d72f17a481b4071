"""The compat ops against vimd's references and plain-PyTorch compositions, forward and gradients,
on fresh random inputs (the ``backend`` fixture runs each on the cpu and the ref backend)."""
import pytest
import torch
import torch.nn.functional as F

from tests.tolerances import assert_close
from vimd_kernels import causal_conv1d_ref, mamba_inner_ref, selective_scan_ref
from vimd_kernels.compat import causal_conv1d as cc
from vimd_kernels.compat import selective_scan_interface as ssi
from vimd_kernels.compat.selective_state_update import selective_state_update

BATCH, D_INNER, L, N, RANK, WIDTH, D_MODEL = 2, 6, 11, 4, 2, 4, 5


def _leaves(*ts):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in ts]


def _grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    live = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, live, g)


def _check(actual_fn, expected_fn, inputs, kernel="scan", what=""):
    a_in, e_in = _leaves(*inputs), _leaves(*inputs)
    a, e = actual_fn(*a_in), expected_fn(*e_in)
    assert_close(a, e, kernel, torch.float32, f"{what} forward")
    for i, (ga, ge) in enumerate(zip(_grads(a, a_in), _grads(e, e_in))):
        assert_close(ga, ge, kernel, torch.float32, f"{what} grad {i}", scale=4)


def _mixer_inputs(extra_bc_cols=True):
    xz = torch.randn(BATCH, 2 * D_INNER, L)
    conv_w, conv_b = torch.randn(D_INNER, 1, WIDTH) * 0.5, torch.randn(D_INNER) * 0.1
    x_proj = torch.randn(RANK + 2 * N * extra_bc_cols, D_INNER) * 0.3
    dt_proj = torch.randn(D_INNER, RANK) * 0.3
    out_w, out_b = torch.randn(D_MODEL, D_INNER) * 0.3, torch.randn(D_MODEL) * 0.1
    A = -torch.rand(D_INNER, N) - 0.5
    D, dt_bias = torch.randn(D_INNER), torch.randn(D_INNER) * 0.1 - 1
    return xz, conv_w, conv_b, x_proj, dt_proj, out_w, out_b, A, D, dt_bias


def _rms(t, w, eps):
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * w


def _composed(xz, conv_w, conv_b, x_proj, dt_proj, A, D, dt_bias, B_bias=None, C_bias=None,
              rms=(None, None, None), eps=1e-6, A_b=None):
    """The mixer body (batch, d_inner, L) written out in plain PyTorch on the references."""
    x, z = xz.chunk(2, dim=1)
    xc = causal_conv1d_ref(x, conv_w, conv_b, "silu")
    x_dbl = xc.transpose(1, 2) @ x_proj.T
    dt = x_dbl[..., :RANK] @ dt_proj.T
    B, C = x_dbl[..., RANK:RANK + N], x_dbl[..., RANK + N:]
    B = B + B_bias if B_bias is not None else B
    C = C + C_bias if C_bias is not None else C
    B, C, dt = (_rms(t, w, eps) if w is not None else t for t, w in zip((B, C, dt), rms))
    B, C, dt = B.transpose(1, 2), C.transpose(1, 2), dt.transpose(1, 2)
    y = selective_scan_ref(xc, dt, A, B, C, D, z, dt_bias, True)
    if A_b is not None:
        flip = lambda t: t.flip(-1)  # noqa: E731
        y = y + flip(selective_scan_ref(flip(xc), flip(dt), A_b, flip(B), flip(C), D, flip(z), dt_bias, True))
    return y


def test_selective_scan_fn(backend):
    u, delta, z = torch.randn(BATCH, D_INNER, L), torch.randn(BATCH, D_INNER, L) * 0.5, torch.randn(BATCH, D_INNER, L)
    A, B, C = -torch.rand(D_INNER, N) - 0.5, torch.randn(BATCH, N, L), torch.randn(BATCH, N, L)
    D, db = torch.randn(D_INNER), torch.randn(D_INNER) * 0.1
    inputs = (u, delta, A, B, C, D, z, db)
    _check(lambda *a: ssi.selective_scan_fn(*a, delta_softplus=True),
           lambda *a: selective_scan_ref(*a, delta_softplus=True), inputs, what="scan")
    out, last = ssi.selective_scan_fn(*inputs, True, return_last_state=True)
    ref_out, ref_last = selective_scan_ref(*inputs, True, return_last_state=True)
    assert_close(last, ref_last, "scan", torch.float32, "last_state")
    out_r, last_r = ssi.selective_scan_ref(*inputs, True, True)
    assert torch.equal(out_r, ref_out) and torch.equal(last_r, ref_last)
    with pytest.raises(NotImplementedError, match="complex A"):
        ssi.selective_scan_fn(u, delta, A.to(torch.complex64), B, C)


def test_mamba_inner_fn_plain_is_vimd_op(backend):
    xz, cw, cb, xp, dp, ow, ob, A, D, db = _mixer_inputs()
    args = (xz, cw, cb, xp, dp, ow, ob, A, D, db)
    _check(lambda xz, cw, cb, xp, dp, ow, ob, A, D, db: ssi.mamba_inner_fn(
               xz, cw, cb, xp, dp, ow, ob, A, None, None, D, db, checkpoint_lvl=0),
           lambda xz, cw, cb, xp, dp, ow, ob, A, D, db: mamba_inner_ref(
               xz, cw, cb, xp, dp, ow, ob, A, None, None, D, db), args, what="plain")
    with pytest.raises(ValueError, match="checkpoint_lvl"):
        ssi.mamba_inner_fn(*args[:8], checkpoint_lvl=2)


@pytest.mark.parametrize("extras", ["proj_bias", "rms", "both"])
def test_mamba_inner_fn_extras(backend, extras):
    """B/C projection biases and the B/C/dt RMS norms of mamba_ssm 2.x, vs the written-out mixer."""
    xz, cw, cb, xp, dp, ow, ob, A, D, db = _mixer_inputs()
    Bb, Cb = torch.randn(N) * 0.2, torch.randn(N) * 0.2
    bw, cw_rms, dtw = torch.rand(N) + 0.5, torch.rand(N) + 0.5, torch.rand(D_INNER) + 0.5
    bias_on, rms_on = extras in ("proj_bias", "both"), extras in ("rms", "both")
    Bb, Cb = (Bb, Cb) if bias_on else (None, None)
    bw, cw_rms, dtw = (bw, cw_rms, dtw) if rms_on else (None, None, None)
    args = (xz, cw, cb, xp, dp, ow, ob, A, D, db, Bb, Cb, bw, cw_rms, dtw)

    def ours(xz, cw, cb, xp, dp, ow, ob, A, D, db, Bb, Cb, bw, crw, dtw):
        return ssi.mamba_inner_fn(xz, cw, cb, xp, dp, ow, ob, A, None, None, D, db, Bb, Cb,
                                  b_rms_weight=bw, c_rms_weight=crw, dt_rms_weight=dtw,
                                  b_c_dt_rms_eps=1e-5)

    def plain(xz, cw, cb, xp, dp, ow, ob, A, D, db, Bb, Cb, bw, crw, dtw):
        y = _composed(xz, cw, cb, xp, dp, A, D, db, Bb, Cb, (bw, crw, dtw), 1e-5)
        return F.linear(y.transpose(1, 2), ow, ob)

    _check(ours, plain, args, what=extras)
    if not rms_on:  # the reference takes the biases only
        expected = plain(*args)
        actual = ssi.mamba_inner_ref(xz, cw, cb, xp, dp, ow, ob, A, None, None, D, db, Bb, Cb)
        assert_close(actual, expected, "scan", torch.float32, "mamba_inner_ref")


def test_mamba_inner_fn_given_B_C(backend):
    xz, cw, cb, _, dp, ow, ob, A, D, db = _mixer_inputs()
    xp = torch.randn(RANK, D_INNER) * 0.3  # x_proj yields delta only
    B, C = torch.randn(BATCH, N, L), torch.randn(BATCH, N, L)
    out = ssi.mamba_inner_fn(xz, cw, cb, xp, dp, ow, ob, A, B, C, D, db)
    assert_close(out, mamba_inner_ref(xz, cw, cb, xp, dp, ow, ob, A, B, C, D, db), "scan",
                 torch.float32, "given B, C")
    with pytest.raises(NotImplementedError, match="b_rms_weight with a given B"):
        ssi.mamba_inner_fn(xz, cw, cb, xp, dp, ow, ob, A, B, C, D, db, b_rms_weight=torch.ones(N))


def test_mamba_inner_fn_no_out_proj(backend):
    xz, cw, cb, xp, dp, ow, ob, A, D, db = _mixer_inputs()
    _check(lambda *a: ssi.mamba_inner_fn_no_out_proj(*a[:5], a[5], None, None, a[6], a[7]),
           lambda *a: _composed(*a), (xz, cw, cb, xp, dp, A, D, db), what="no_out_proj")


def test_bimamba_inner_fn_v1(backend):
    """Vim's v1: shared conv / x_proj / dt_proj / D / dt_bias, A_b on the flipped sequence, summed."""
    xz, cw, cb, xp, dp, ow, ob, A, D, db = _mixer_inputs()
    A_b = -torch.rand(D_INNER, N) - 0.5
    args = (xz, cw, cb, xp, dp, ow, ob, A, A_b, D, db)

    def plain(xz, cw, cb, xp, dp, ow, ob, A, A_b, D, db):
        return F.linear(_composed(xz, cw, cb, xp, dp, A, D, db, A_b=A_b).transpose(1, 2), ow, ob)

    for fn in (ssi.bimamba_inner_fn, ssi.bimamba_inner_ref):
        _check(lambda *a: fn(*a[:9], None, None, a[9], a[10]), plain, args, what=fn.__name__)


# ----------------------------------------------------------------------------- causal conv1d

@pytest.mark.parametrize("L_, silu", [(9, True), (2, False)])  # L < width - 1 too
def test_causal_conv1d_states_vs_concatenated_sequence(backend, L_, silu):
    act = "silu" if silu else None
    x, w, b = torch.randn(BATCH, D_INNER, L_), torch.randn(D_INNER, WIDTH), torch.randn(D_INNER)
    h0 = torch.randn(BATCH, D_INNER, WIDTH - 1)

    def ours(x, w, b, h0):
        out, final = cc.causal_conv1d_fn(x, w, b, initial_states=h0, return_final_states=True,
                                         activation=act)
        return torch.cat([out, final * 0.7], dim=-1)  # both outputs carry the gradient

    def on_concatenation(x, w, b, h0):
        xx = torch.cat([h0, x], dim=-1)
        return torch.cat([causal_conv1d_ref(xx, w, b, act)[..., WIDTH - 1:], xx[..., -(WIDTH - 1):] * 0.7], -1)

    _check(ours, on_concatenation, (x, w, b, h0), kernel="conv", what="initial/final states")
    _check(lambda x, w, b, h0: cc.causal_conv1d_ref(x, w, b, h0, False, None, act), lambda x, w, b, h0:
           on_concatenation(x, w, b, h0)[..., :L_], (x, w, b, h0), kernel="conv", what="ref")
    _, final = cc.causal_conv1d_fn(x, w, b, return_final_states=True)  # no initial states: zeros
    assert_close(final, F.pad(x, (WIDTH - 1 - L_, 0)), "conv", torch.float32, "final states")
    buf = torch.empty(BATCH, D_INNER, WIDTH - 1)
    _, final = cc.causal_conv1d_fn(x, w, b, initial_states=h0, return_final_states=True, final_states_out=buf)
    assert final is buf and torch.equal(buf, torch.cat([h0, x], -1)[..., -(WIDTH - 1):])


def test_causal_conv1d_unsupported():
    x, w = torch.randn(1, 3, 5), torch.randn(3, 4)
    with pytest.raises(NotImplementedError, match="seq_idx"):
        cc.causal_conv1d_fn(x, w, seq_idx=torch.zeros(1, 5, dtype=torch.int32))
    with pytest.raises(NotImplementedError, match="activation"):
        cc.causal_conv1d_fn(x, w, activation="gelu")
    with pytest.raises(ValueError, match="initial_states"):
        cc.causal_conv1d_fn(x, w, initial_states=torch.zeros(1, 3, 2))


def test_causal_conv1d_update_token_by_token(backend):
    """Decoding one token at a time (and two at a time, and through a circular buffer, and with
    conv_state_indices) gives the full conv's outputs and leaves the last inputs in the state."""
    x, w, b = torch.randn(BATCH, D_INNER, 7), torch.randn(D_INNER, WIDTH), torch.randn(D_INNER)
    full = cc.causal_conv1d_fn(x, w, b, activation="silu")
    state = torch.zeros(BATCH, D_INNER, WIDTH)  # state_len = width, as Mamba allocates it
    steps = [cc.causal_conv1d_update(x[..., t], state, w, b, "silu") for t in range(7)]
    assert_close(torch.stack(steps, -1), full, "conv", torch.float32, "one token")
    assert torch.equal(state, x[..., -WIDTH:])
    state = torch.zeros(BATCH, D_INNER, WIDTH - 1)
    pairs = [cc.causal_conv1d_update(x[..., t:t + 2], state, w, b, "silu") for t in range(0, 6, 2)]
    assert_close(torch.cat(pairs, -1), full[..., :6], "conv", torch.float32, "two tokens")
    ring, seqlens = torch.zeros(BATCH, D_INNER, 5), torch.tensor([0, 0], dtype=torch.int32)
    steps = []
    for t in range(7):
        steps.append(cc.causal_conv1d_update_ref(x[..., t], ring, w, b, "silu", cache_seqlens=seqlens))
        seqlens += 1
    assert_close(torch.stack(steps, -1), full, "conv", torch.float32, "circular buffer")
    pool, idx = torch.zeros(4, D_INNER, WIDTH), torch.tensor([3, 1], dtype=torch.int32)
    steps = [cc.causal_conv1d_update(x[..., t], pool, w, b, "silu", conv_state_indices=idx) for t in range(7)]
    assert_close(torch.stack(steps, -1), full, "conv", torch.float32, "conv_state_indices")
    assert torch.equal(pool[idx.long()], x[..., -WIDTH:]) and not pool[[0, 2]].any()


# ----------------------------------------------------------------------------- state update

def _scan_inputs(L_=6):
    x, dt, z = torch.randn(BATCH, D_INNER, L_), torch.randn(BATCH, D_INNER, L_) * 0.5, torch.randn(BATCH, D_INNER, L_)
    A, B, C = -torch.rand(D_INNER, N) - 0.5, torch.randn(BATCH, N, L_), torch.randn(BATCH, N, L_)
    return x, dt, A, B, C, torch.randn(D_INNER), z, torch.randn(D_INNER) * 0.1


def test_selective_state_update_token_by_token(backend):
    x, dt, A, B, C, D, z, db = _scan_inputs()
    full, last = ssi.selective_scan_fn(x, dt, A, B, C, D, z, db, True, True)
    state = torch.zeros(BATCH, D_INNER, N)
    steps = [selective_state_update(state, x[..., t], dt[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                    db, True) for t in range(x.shape[-1])]
    assert_close(torch.stack(steps, -1), full, "scan", torch.float32, "steps")
    assert_close(state, last, "scan", torch.float32, "state")


def test_selective_state_update_heads_groups_and_indices():
    """(batch, nheads, dim, N) with ngroups dividing nheads is the one-head update per head, with
    the head's group's B and C; state_batch_indices picks the state rows."""
    from vimd_kernels.compat.selective_state_update import selective_state_update_ref
    H, G, P = 4, 2, 3
    state = torch.randn(BATCH, H, P, N)
    x, dt, z = torch.randn(BATCH, H, P), torch.randn(BATCH, H, P), torch.randn(BATCH, H, P)
    A, D, db = -torch.rand(H, P, N), torch.randn(H, P), torch.randn(H, P)
    B, C = torch.randn(BATCH, G, N), torch.randn(BATCH, G, N)
    per_head = []
    for h in range(H):
        s = state[:, h].clone()
        per_head.append(selective_state_update_ref(s, x[:, h], dt[:, h], A[h], B[:, h // 2], C[:, h // 2],
                                                   D[h], z[:, h], db[h], True))
        per_head[-1] = (per_head[-1], s)
    pool = torch.zeros(5, H, P, N)
    idx = torch.tensor([4, 0])
    pool[idx] = state
    out = selective_state_update(pool, x, dt, A, B, C, D, z, db, True, state_batch_indices=idx)
    for h in range(H):
        torch.testing.assert_close(out[:, h], per_head[h][0])
        torch.testing.assert_close(pool[idx, h], per_head[h][1])
    assert not pool[1:4].any()
