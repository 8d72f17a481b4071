"""Up-front argument checks for the public ops: every error names the argument and what was expected.

The one validation layer in Python: the shapes, dtypes and devices every backend needs, then
(``backend``) the limits the chosen backend's module declares in its capabilities. The C++
bindings check again before a launch, as the last guard.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .backend import FLOAT_DTYPES as FLOAT_IO
from .registry import capabilities

MAX_CONV_WIDTH = 8


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _names(dtypes) -> str:
    return ", ".join(_name(d) for d in dtypes)


def tensor(name: str, t, ndims=None, dtypes=None, optional=False) -> None:
    if t is None:
        if optional:
            return
        raise TypeError(f"{name} must be a torch.Tensor, got None")
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndims is not None and t.dim() not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_names(dtypes)}), got {_name(t.dtype)}")


def shape(name: str, t: Tensor, expected: tuple, what: str = "") -> None:
    if tuple(t.shape) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{name} must have shape {tuple(expected)}{extra}, got {tuple(t.shape)}")


def same_device(ref_name: str, ref: Tensor, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                             "all inputs must be on one device")


def _param_dtype(u: Tensor) -> tuple:
    return (torch.float64,) if u.dtype == torch.float64 else (torch.float32,)


def _weight_dtypes(x: Tensor) -> tuple:
    """Conv weight / bias: x's dtype or the parameter dtype."""
    return tuple(dict.fromkeys((x.dtype,) + _param_dtype(x)))


def _conv_weight(weight, dim: int, wdt) -> tuple:
    """A depthwise conv weight (dim, width) or (dim, 1, width) with 2 <= width <= MAX_CONV_WIDTH:
    (the (dim, width) view, width)."""
    tensor("weight", weight, (2, 3), wdt)
    if weight.dim() == 3:
        if weight.shape[1] != 1:
            raise ValueError(f"weight must be (dim, width) or (dim, 1, width), got {tuple(weight.shape)}")
        weight = weight.squeeze(1)
    if weight.shape[0] != dim:
        raise ValueError(f"weight must have shape ({dim}, width) for x with dim={dim}, "
                         f"got {tuple(weight.shape)}")
    width = weight.shape[1]
    if not 2 <= width <= MAX_CONV_WIDTH:
        raise ValueError(f"weight width must be between 2 and {MAX_CONV_WIDTH}, got {width}")
    return weight, width


def selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    tensor("u", u, (3,), FLOAT_IO)
    batch, dim, L = u.shape
    if L < 1 or dim < 1 or batch < 1:
        raise ValueError(f"u must be (batch, dim, L) with every size >= 1, got {tuple(u.shape)}")
    io = (u.dtype,)
    tensor("delta", delta, (3,), io)
    shape("delta", delta, u.shape, "same as u")
    pd = _param_dtype(u)
    tensor("A", A, (2,), pd)
    if A.shape[0] != dim or A.shape[1] < 1:
        raise ValueError(f"A must have shape ({dim}, N) with N >= 1, got {tuple(A.shape)}")
    N = A.shape[1]
    for name, X in (("B", B), ("C", C)):
        tensor(name, X, (2, 3, 4), _weight_dtypes(u))
        if X.dim() == 2:
            shape(name, X, (dim, N), "constant (dim, N)")
        elif X.dim() == 3:
            shape(name, X, (batch, N, L), "variable (batch, N, L)")
        else:
            G = X.shape[1]
            if G < 1 or dim % G != 0:
                raise ValueError(f"{name} has {G} groups, which must divide dim={dim} "
                                 f"(grouped {name} is (batch, G, N, L)), got {tuple(X.shape)}")
            shape(name, X, (batch, G, N, L), "grouped (batch, G, N, L)")
    tensor("D", D, (1,), pd, optional=True)
    if D is not None:
        shape("D", D, (dim,))
    tensor("z", z, (3,), io, optional=True)
    if z is not None:
        shape("z", z, u.shape, "same as u")
    tensor("delta_bias", delta_bias, (1,), pd, optional=True)
    if delta_bias is not None:
        shape("delta_bias", delta_bias, (dim,))
    tensor("initial_state", initial_state, (3,), pd, optional=True)
    if initial_state is not None:
        shape("initial_state", initial_state, (batch, dim, N))
    same_device("u", u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                initial_state=initial_state)


def causal_conv1d(x, weight, bias, activation) -> Tensor:
    """Checks and returns the weight as (dim, width)."""
    tensor("x", x, (3,), FLOAT_IO)
    batch, dim, L = x.shape
    if L < 1 or dim < 1 or batch < 1:
        raise ValueError(f"x must be (batch, dim, L) with every size >= 1, got {tuple(x.shape)}")
    wdt = _weight_dtypes(x)
    weight, _ = _conv_weight(weight, dim, wdt)
    tensor("bias", bias, (1,), wdt, optional=True)
    if bias is not None:
        shape("bias", bias, (dim,))
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    same_device("x", x, weight=weight, bias=bias)
    return weight


def mamba_inner(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                out_proj_weight, out_proj_bias, suffix: str = "", D=None, delta_bias=None) -> None:
    """Shape and dtype checks tying the mixer's weights together."""
    tensor("xz", xz, (3,), FLOAT_IO)
    if xz.shape[1] % 2:
        raise ValueError(f"xz must be (batch, 2*d_inner, L), got an odd channel count {xz.shape[1]}")
    d_inner = xz.shape[1] // 2
    s = suffix
    pd, wdt = _param_dtype(xz), _weight_dtypes(xz)  # what the conv and the scan take for xz's halves
    tensor("A" + s, A, (2,), pd)
    if A.shape[0] != d_inner:
        raise ValueError(f"A{s} must have shape ({d_inner}, N) for xz with d_inner={d_inner}, "
                         f"got {tuple(A.shape)}")
    N = A.shape[1]
    tensor("delta_proj_weight" + s, delta_proj_weight, (2,))
    if delta_proj_weight.shape[0] != d_inner:
        raise ValueError(f"delta_proj_weight{s} must have shape ({d_inner}, dt_rank), "
                         f"got {tuple(delta_proj_weight.shape)}")
    rank = delta_proj_weight.shape[1]
    want = rank + (N if B is None else 0) + (N if C is None else 0)
    tensor("x_proj_weight" + s, x_proj_weight, (2,))
    shape("x_proj_weight" + s, x_proj_weight, (want, d_inner), "(dt_rank [+N for B] [+N for C], d_inner)")
    tensor("out_proj_weight", out_proj_weight, (2,))
    if out_proj_weight.shape[1] != d_inner:
        raise ValueError(f"out_proj_weight must have shape (d_model, {d_inner}), "
                         f"got {tuple(out_proj_weight.shape)}")
    tensor("out_proj_bias", out_proj_bias, (1,), optional=True)
    if out_proj_bias is not None:
        shape("out_proj_bias", out_proj_bias, (out_proj_weight.shape[0],))
    tensor("conv1d_weight" + s, conv1d_weight, (2, 3), wdt)
    cw = conv1d_weight
    if cw.shape[0] != d_inner or (cw.dim() == 3 and cw.shape[1] != 1):
        raise ValueError(f"conv1d_weight{s} must have shape ({d_inner}, width) or ({d_inner}, 1, width) "
                         f"for xz with d_inner={d_inner}, got {tuple(cw.shape)}")
    if not 2 <= cw.shape[-1] <= MAX_CONV_WIDTH:
        raise ValueError(f"conv1d_weight{s} width must be between 2 and {MAX_CONV_WIDTH}, "
                         f"got {cw.shape[-1]}")
    for name, t, dtypes in (("conv1d_bias", conv1d_bias, wdt), ("D", D, pd), ("delta_bias", delta_bias, pd)):
        tensor(name + s, t, (1,), dtypes, optional=True)
        if t is not None:
            shape(name + s, t, (d_inner,))
    same_device("xz", xz, **{"conv1d_weight" + s: conv1d_weight, "conv1d_bias" + s: conv1d_bias,
                             "x_proj_weight" + s: x_proj_weight,
                             "delta_proj_weight" + s: delta_proj_weight, "A" + s: A,
                             "D" + s: D, "delta_bias" + s: delta_bias,
                             "out_proj_weight": out_proj_weight, "out_proj_bias": out_proj_bias})


def backend(kernel: str, name: str, *, io: tuple, state: tuple | None = None,
            width: tuple | None = None, reverse: bool = False) -> None:
    """The limits of backend ``name``'s module for ``kernel`` (its declared capabilities), each
    given as (argument name, tensor): ``io`` the row operand (its dtype), ``state`` A (N states),
    ``width`` the conv weight (its last dimension)."""
    caps = capabilities(kernel, name)
    what = f"backend {name!r} of {kernel}"
    arg, t = io
    if t.dtype not in caps.dtypes:
        raise TypeError(f"{arg}: {what} takes {_names(caps.dtypes)}, got {_name(t.dtype)}")
    if state is not None and caps.max_state is not None and state[1].shape[-1] > caps.max_state:
        raise ValueError(f"{state[0]}: {what} supports N <= {caps.max_state} states, "
                         f"got N={state[1].shape[-1]}")
    if width is not None and caps.max_width is not None and width[1].shape[-1] > caps.max_width:
        raise ValueError(f"{width[0]}: {what} supports widths up to {caps.max_width}, "
                         f"got {width[1].shape[-1]}")
    if reverse and not caps.reverse:
        raise ValueError(f"reverse: {what} runs forward in time only")


def mixer_backend(name: str, xz: Tensor, conv1d_weights: list, As: list) -> None:
    """``backend`` for the mixers' conv and scan, one branch per direction (1: ``_b``, reversed)."""
    for s, (w, A) in enumerate(zip(conv1d_weights, As)):
        sfx = "_b" if s else ""
        backend("causal_conv1d", name, io=("xz", xz), width=("conv1d_weight" + sfx, w), reverse=bool(s))
        backend("selective_scan", name, io=("xz", xz), state=("A" + sfx, A), reverse=bool(s))


STATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def selective_state_update(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    """The decoding step of the scan: state (batch, dim, N), x/dt/z (batch, dim), A (dim, N),
    B/C (batch, N) or grouped (batch, G, N), D/dt_bias (dim,)."""
    tensor("x", x, (2,), FLOAT_IO)
    batch, dim = x.shape
    if dim < 1 or batch < 1:
        raise ValueError(f"x must be (batch, dim) with every size >= 1, got {tuple(x.shape)}")
    pd = _param_dtype(x)
    tensor("state", state, (3,), pd if x.dtype == torch.float64 else STATE_DTYPES)
    if state.shape[:2] != x.shape or state.shape[2] < 1:
        raise ValueError(f"state must have shape ({batch}, {dim}, N) with N >= 1 for x of shape "
                         f"{tuple(x.shape)}, got {tuple(state.shape)}")
    N = state.shape[2]
    tensor("dt", dt, (2,), (x.dtype,))
    shape("dt", dt, x.shape, "same as x")
    tensor("A", A, (2,), pd)
    shape("A", A, (dim, N), "(dim, N)")
    for name, X in (("B", B), ("C", C)):
        tensor(name, X, (2, 3), _weight_dtypes(x))
        if X.dim() == 2:
            shape(name, X, (batch, N), "(batch, N)")
        else:
            G = X.shape[1]
            if G < 1 or dim % G != 0:
                raise ValueError(f"{name} has {G} groups, which must divide dim={dim} "
                                 f"(grouped {name} is (batch, G, N)), got {tuple(X.shape)}")
            shape(name, X, (batch, G, N), "grouped (batch, G, N)")
    tensor("z", z, (2,), (x.dtype,), optional=True)
    if z is not None:
        shape("z", z, x.shape, "same as x")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        tensor(name, t, (1,), pd, optional=True)
        if t is not None:
            shape(name, t, (dim,))
    same_device("x", x, state=state, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)


def causal_conv1d_update(x, conv_state, weight, bias, activation, cache_seqlens) -> Tensor:
    """The decoding step of the conv: x (batch, dim, seqlen) (the public op unsqueezes (batch,
    dim)), conv_state (batch, dim, state_len >= width - 1) in x's dtype, weight (dim, width) or
    (dim, 1, width), bias (dim,), cache_seqlens (batch,) int32/int64. Returns the weight as
    (dim, width)."""
    tensor("x", x, (3,), FLOAT_IO)
    batch, dim, seqlen = x.shape
    if seqlen < 1 or dim < 1 or batch < 1:
        raise ValueError(f"x must be (batch, dim) or (batch, dim, seqlen) with every size >= 1, "
                         f"got {tuple(x.shape)}")
    wdt = _weight_dtypes(x)
    weight, width = _conv_weight(weight, dim, wdt)
    tensor("conv_state", conv_state, (3,), (x.dtype,))
    if conv_state.shape[:2] != x.shape[:2] or conv_state.shape[2] < width - 1:
        raise ValueError(f"conv_state must have shape ({batch}, {dim}, state_len) with state_len >= "
                         f"width - 1 = {width - 1}, got {tuple(conv_state.shape)}")
    tensor("bias", bias, (1,), wdt, optional=True)
    if bias is not None:
        shape("bias", bias, (dim,))
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    tensor("cache_seqlens", cache_seqlens, (1,), (torch.int32, torch.int64), optional=True)
    if cache_seqlens is not None:
        shape("cache_seqlens", cache_seqlens, (batch,))
    same_device("x", x, conv_state=conv_state, weight=weight, bias=bias, cache_seqlens=cache_seqlens)
    return weight
