"""Kernel benchmarks: ``vimd bench kernels [--ops ...] [--shapes ...] [--providers ...] [--quick]``
(or ``python -m vimd_kernels.bench.kernels ...``).

Times selective_scan, causal_conv1d, mamba_inner and bimamba_inner (fwd and fwd+bwd) on the
workloads of vimd_kernels/bench/shapes.py for every provider that is importable here (the upstream
peers mamba_ssm, causal_conv1d and mambapy where installed), and writes a table to stdout plus
CSV/JSON/PNG to ``--out`` (default ./vimd-bench/<device>/).  The run ends with one line per provider
that was not timed everywhere, saying why.  Presets:

- ``--preset cpu``: the scan on the CPU at ViM-Ti's stride-16 shape, u = (8, 384, 197), N = 16,
  float32, fwd+bwd: cpu vs mambapy vs the reference, with a line of speed-ups and peak memory.
- ``--preset gpu``: cuda and triton against the upstream kernels (mamba_ssm, causal_conv1d, the
  ViM mixer composed from them) at the ViM shapes and the DVMSR 256x256 scan, then the slow peers
  (reference, mambapy, torch.compile of the reference) at vim-ti-s16.

Every run is bounded: ``--budget-s`` for the whole run (jobs past it are recorded as skipped) and
``--job-timeout-s`` for any one job (it bounds torch.compile's first call too).  ``--dry-run``
prints the job list.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import itertools
import math
import os
import sys
import types
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from vimd_kernels.bench import common, shapes
from vimd_kernels.bench.shapes import Workload

OPS = ("selective_scan", "causal_conv1d", "mamba_inner", "bimamba_inner")
MODES = ("fwd", "fwd+bwd")
OURS = ("cpu", "triton", "cuda")
# mamba_ssm: its own fused function (selective_scan_fn, mamba_inner_fn).  mamba_ssm_composed: the
# mixer composed from mamba_ssm's selective_scan_fn and causal_conv1d's causal_conv1d_fn exactly as
# our reference composes it (ViM's reverse branch on flipped xz), since upstream has no ViM mixer.
PEERS = ("ref", "compiled_ref", "mambapy", "mamba_ssm", "mamba_ssm_composed", "causal_conv1d")
PROVIDERS = ("ref", "compiled_ref", "cpu", "triton", "cuda", "mambapy", "mamba_ssm", "mamba_ssm_composed",
             "causal_conv1d")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# The reference and mambapy materialise several (batch, dim, L, N) float32 tensors and the reference
# walks L in Python: above these sizes they are skipped (and the table says so).
REF_BUDGET = {"cpu": 2 ** 25, "cuda": 2 ** 28}   # batch * dim * L * N elements
COMPILE_MAX_L = 256                               # torch.compile unrolls the reference's L loop


# ----------------------------------------------------------------------------- presets

def _group(ops, shapes_, modes, dtypes, providers) -> dict:
    """A block of jobs: every op x shape x dtype x mode x provider (in that nesting)."""
    return dict(ops=list(ops), shapes=list(shapes_), modes=list(modes), dtypes=list(dtypes),
                providers=list(providers))


VIM_SHAPES = ("vim-ti-s16", "vim-s-s16", "vim-ti-s8", "vim-s-s8")
# The gpu preset's cells against the upstream kernel that does the same work: (op, shapes, modes,
# dtypes, peer).  The mixers are benchmarked in float32 only (SR models run in float32).
GPU_CELLS = (
    ("selective_scan", VIM_SHAPES, ("fwd+bwd",), ("float32", "bfloat16"), "mamba_ssm"),
    ("bimamba_inner", VIM_SHAPES, ("fwd+bwd",), ("float32",), "mamba_ssm_composed"),
    ("selective_scan", ("dvmsr-256",), ("fwd+bwd",), ("float32",), "mamba_ssm"),
    ("selective_scan", VIM_SHAPES + ("dvmsr-256",), ("fwd",), ("float32",), "mamba_ssm"),
    ("causal_conv1d", VIM_SHAPES, ("fwd", "fwd+bwd"), ("float32",), "causal_conv1d"),
)
PEER_SHAPE = "vim-ti-s16"   # where the gpu preset also times the slow peers


def _slow_peer_group(providers, modes=("fwd+bwd", "fwd")) -> dict:
    return _group(["selective_scan"], [PEER_SHAPE], modes, ["float32"], providers)


# A preset is a device and an ordered list of job groups.  gpu: cuda vs each cell's peer first,
# then the cheap slow peers (reference, mambapy), then triton on the same cells (its first calls
# compile), and torch.compile of the reference last (its L loop unrolled: minutes of compile, cut by
# --job-timeout-s; fwd first, the cheaper compile).
PRESETS = {
    "cpu": dict(device="cpu", groups=[
        _group(["selective_scan"], ["cpu-row"], ["fwd+bwd"], ["float32"], ["cpu", "mambapy", "ref"])]),
    "gpu": dict(device="cuda", groups=(
        [_group([op], shapes_, modes, dtypes, ["cuda", peer]) for op, shapes_, modes, dtypes, peer in GPU_CELLS]
        + [_slow_peer_group(["ref", "mambapy"])]
        + [_group([op], shapes_, modes, dtypes, ["triton"]) for op, shapes_, modes, dtypes, _ in GPU_CELLS]
        + [_slow_peer_group(["compiled_ref"], ("fwd", "fwd+bwd"))])),
}


class Unsupported(Exception):
    """This provider cannot run this op/shape here (the message says why)."""


# ----------------------------------------------------------------------------- inputs

def scan_inputs(w: Workload, batch: int, dtype, device) -> dict:
    g = torch.Generator().manual_seed(0)
    d, L, N = w.d_inner, w.L, w.N
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    bc = (batch, w.groups, N, L) if w.groups else (batch, N, L)
    x = dict(u=r(batch, d, L).to(dtype), delta=(0.5 * r(batch, d, L) - 1).to(dtype),
             A=-torch.exp(torch.log(torch.arange(1, N + 1.0)).repeat(d, 1)),
             B=r(*bc).to(dtype), C=r(*bc).to(dtype), D=r(d), z=r(batch, d, L).to(dtype),
             delta_bias=0.1 * torch.rand(d, generator=g) + 0.01)
    return {k: v.to(device) for k, v in x.items()}


def conv_inputs(w: Workload, batch: int, dtype, device) -> dict:
    g = torch.Generator().manual_seed(0)
    x = dict(x=torch.randn(batch, w.d_inner, w.L, generator=g).to(dtype),
             weight=torch.randn(w.d_inner, 4, generator=g) / 2, bias=torch.randn(w.d_inner, generator=g))
    return {k: v.to(device) for k, v in x.items()}


def _branch(w: Workload, g) -> dict:
    d, N, rank = w.d_inner, w.N, w.dt_rank
    return dict(conv1d_weight=torch.randn(d, 1, 4, generator=g) / 2,
                conv1d_bias=torch.randn(d, generator=g) * 0.1,
                x_proj_weight=torch.randn(rank + 2 * N, d, generator=g) / d ** 0.5,
                delta_proj_weight=torch.randn(d, rank, generator=g) / rank ** 0.5,
                A=-torch.exp(torch.log(torch.arange(1, N + 1.0)).repeat(d, 1)),
                D=torch.ones(d), delta_bias=torch.rand(d, generator=g) * 0.5 - 2.0)


def mixer_inputs(w: Workload, batch: int, dtype, device, bidirectional: bool) -> dict:
    if dtype != torch.float32:
        raise Unsupported("mixers are benchmarked in float32 (weights and xz share a dtype)")
    g = torch.Generator().manual_seed(0)
    x = dict(xz=torch.randn(batch, 2 * w.d_inner, w.L, generator=g), **_branch(w, g),
             out_proj_weight=torch.randn(w.d_model, w.d_inner, generator=g) / w.d_inner ** 0.5)
    if bidirectional:
        x.update({k + "_b": v for k, v in _branch(w, g).items()})
    return {k: v.to(device) for k, v in x.items()}


# ----------------------------------------------------------------------------- providers

def _mambapy_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The SAME selective scan as selective_scan_fn, computed with mambapy's parallel scan (autograd
    through its PScan): deltaA = exp(delta A), deltaBu = delta B u, h = pscan, y = <h, C> + D u,
    y *= silu(z).  Layout (batch, L, dim, N) as mambapy wants; B/C variable or grouped."""
    from mambapy.pscan import pscan

    batch, dim, L = u.shape
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    dt = dt.transpose(1, 2)                                   # (b, L, d)
    uf = u.float().transpose(1, 2)

    def per_channel(X):                                       # (b, L, d or 1, N)
        if X.dim() == 3:
            return X.float().permute(0, 2, 1).unsqueeze(2)
        groups = X.shape[1]
        return X.float().permute(0, 3, 1, 2).repeat_interleave(dim // groups, dim=2)

    Bc, Cc = per_channel(B), per_channel(C)
    delta_a = torch.exp(dt.unsqueeze(-1) * A)                 # (b, L, d, N)
    delta_bu = dt.unsqueeze(-1) * Bc * uf.unsqueeze(-1)
    hs = pscan(delta_a, delta_bu)
    y = (hs * Cc).sum(-1)
    if D is not None:
        y = y + D * uf
    if z is not None:
        y = y * F.silu(z.float().transpose(1, 2))
    return y.transpose(1, 2).to(u.dtype)


def _call_scan(fn, x, **kw):
    return fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, **kw)


def _call_conv(fn, x, **kw):
    return fn(x["x"], x["weight"], x["bias"], "silu", **kw)


def _call_mamba(fn, x, **kw):
    # delta_softplus by keyword: mamba_ssm's mamba_inner_fn has B_proj_bias, C_proj_bias before it
    return fn(x["xz"], x["conv1d_weight"], x["conv1d_bias"], x["x_proj_weight"], x["delta_proj_weight"],
              x["out_proj_weight"], None, x["A"], None, None, x["D"], x["delta_bias"], delta_softplus=True, **kw)


def _call_bimamba(fn, x, **kw):
    return fn(x["xz"], x["conv1d_weight"], x["conv1d_bias"], x["x_proj_weight"], x["delta_proj_weight"],
              x["A"], x["D"], x["delta_bias"], x["conv1d_weight_b"], x["conv1d_bias_b"],
              x["x_proj_weight_b"], x["delta_proj_weight_b"], x["A_b"], x["D_b"], x["delta_bias_b"],
              x["out_proj_weight"], None, True, **kw)


CALL = {"selective_scan": _call_scan, "causal_conv1d": _call_conv, "mamba_inner": _call_mamba,
        "bimamba_inner": _call_bimamba}
KERNELS_OF = {"selective_scan": ("selective_scan",), "causal_conv1d": ("causal_conv1d",),
              "mamba_inner": ("selective_scan", "causal_conv1d"),
              "bimamba_inner": ("selective_scan", "causal_conv1d")}


def _ref_fn(op: str):
    import vimd_kernels as vk
    return {"selective_scan": vk.selective_scan_ref, "causal_conv1d": vk.causal_conv1d_ref,
            "mamba_inner": vk.mamba_inner_ref, "bimamba_inner": vk.bimamba_v2_inner_ref}[op]


def peer_kernels(selective_scan_fn, causal_conv1d_fn) -> tuple[Callable, Callable]:
    """The ``scan`` and ``conv`` callables vimd_kernels.ops.inner_core calls, made from mamba_ssm's
    ``selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False)`` and causal_conv1d's ``causal_conv1d_fn(x, weight (dim, width),
    bias=None, seq_idx=None, initial_states=None, return_final_states=False, final_states_out=None,
    activation=None)``.  Neither has a reverse flag: composed_mixer flips xz itself."""
    def scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse=False):
        if reverse:
            raise ValueError("the peer scan runs forward only; flip the inputs")
        return selective_scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                 delta_softplus=delta_softplus)

    def conv(x, weight, bias, activation, reverse=False):
        if reverse:
            raise ValueError("the peer conv runs forward only; flip the inputs")
        return causal_conv1d_fn(x, weight.reshape(weight.shape[0], -1), bias, activation=activation)

    return scan, conv


def composed_mixer(op: str, scan: Callable, conv: Callable) -> Callable:
    """f(inputs) for mamba_inner / bimamba_inner composed from separate scan and conv kernels the way
    vimd_kernels/mamba_inner/reference.py composes them: inner_core per branch; ViM's reverse
    branch runs on xz.flip(-1) and its output is flipped back; out_proj of the branches' mean.
    Same arguments as _call_mamba/_call_bimamba (no out_proj bias, B/C from x_proj, softplus)."""
    from vimd_kernels.ops import inner_core

    def branch(xz, x, s=""):
        return inner_core(xz, x["conv1d_weight" + s], x["conv1d_bias" + s], x["x_proj_weight" + s],
                          x["delta_proj_weight" + s], x["A" + s], None, None, x["D" + s],
                          x["delta_bias" + s], True, False, scan=scan, conv=conv)

    def mixer(x):
        y = branch(x["xz"], x)
        if op == "bimamba_inner":
            y = (y + branch(x["xz"].flip(-1), x, "_b").flip(-1)) * 0.5
        return F.linear(y.transpose(1, 2), x["out_proj_weight"])

    return mixer


def import_peer(name: str):
    """Import module ``name`` (e.g. "mamba_ssm.ops.selective_scan_interface") without running its
    top-level package's __init__ unless that is already imported: mamba_ssm's __init__ imports its
    model classes and with them transformers and huggingface_hub, which the ops do not use and which
    may be missing or of a release mamba_ssm 2.3 does not know (e.g. transformers 5).  ImportError
    when the package, the module or its extension is missing."""
    top = name.split(".")[0]
    stub = top not in sys.modules
    if stub:
        spec = importlib.util.find_spec(top)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"No module named {top!r}", name=top)
        package = types.ModuleType(top)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[top] = package
    try:
        return importlib.import_module(name)
    except BaseException:
        if stub:
            sys.modules.pop(top, None)
        raise


# The pip name of each peer package.
PIP_NAMES = {"mamba_ssm": "mamba-ssm", "causal_conv1d": "causal-conv1d", "mambapy": "mambapy"}


def not_installed(e: ImportError) -> str:
    """Why a peer does not import: the package to install, or the module that is missing (a
    dependency, or the compiled extension of a package that is there)."""
    if e.name in PIP_NAMES:
        return f"not installed: pip install {PIP_NAMES[e.name]}"
    return f"not importable ({e.name or e})"


# The ops each peer provides (the reference and our backends provide every op).
PEER_OPS = {"mambapy": ("selective_scan",), "mamba_ssm": ("selective_scan", "mamba_inner"),
            "causal_conv1d": ("causal_conv1d",), "mamba_ssm_composed": ("mamba_inner", "bimamba_inner")}


def provides(provider: str, op: str) -> bool:
    """Whether ``provider`` has ``op`` at all (whether it can run it here is another matter)."""
    return op in PEER_OPS.get(provider, OPS)


def _peer_fn(provider: str, op: str, device: str) -> Callable:
    if device != "cuda":
        raise Unsupported("GPU only")
    try:
        if provider == "causal_conv1d":
            from causal_conv1d import causal_conv1d_fn
            return lambda x: causal_conv1d_fn(x["x"], x["weight"], x["bias"], activation="silu")
        msi = import_peer("mamba_ssm.ops.selective_scan_interface")
        if provider == "mamba_ssm":
            fn = msi.selective_scan_fn if op == "selective_scan" else msi.mamba_inner_fn
            return lambda x: CALL[op](fn, x)
        from causal_conv1d import causal_conv1d_fn
        return composed_mixer(op, *peer_kernels(msi.selective_scan_fn, causal_conv1d_fn))
    except ImportError as e:
        raise Unsupported(not_installed(e)) from None


_COMPILED: dict = {}


def provider_fn(provider: str, op: str, w: Workload, batch: int, device: str) -> Callable:
    """A callable f(inputs) -> output(s) for ``provider``, or Unsupported with the reason."""
    from vimd_kernels import registry
    if not provides(provider, op):
        hint = (" (upstream has no ViM mixer: see mamba_ssm_composed)"
                if provider == "mamba_ssm" and op == "bimamba_inner" else "")
        raise Unsupported(f"{provider} has no {op}{hint}")
    elems = batch * w.d_inner * w.L * w.N
    if provider in ("ref", "compiled_ref", "mambapy") and elems > REF_BUDGET[device]:
        raise Unsupported(f"skipped: over the size budget (batch*dim*L*N > {REF_BUDGET[device] / 1e6:.0f}M)")
    if provider == "ref":
        fn = _ref_fn(op)
        return lambda x: CALL[op](fn, x)
    if provider == "compiled_ref":
        if w.L > COMPILE_MAX_L:
            raise Unsupported(f"skipped: torch.compile unrolls the reference's L loop (L > {COMPILE_MAX_L})")
        key = (op, device)
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(_ref_fn(op))
        fn = _COMPILED[key]
        return lambda x: CALL[op](fn, x)
    if provider in OURS:
        b = registry.BACKENDS[provider]
        if device not in b.devices:
            raise Unsupported(f"runs on {'/'.join(b.devices)} only")
        if provider == "triton" and device == "cpu" and not registry.interpreting():
            raise Unsupported("CPU tensors need TRITON_INTERPRET=1 (the interpreter; not a benchmark)")
        missing = [k for k in KERNELS_OF[op] if not registry.kernel_available(k, provider)]
        if missing:
            raise Unsupported(f"unavailable ({', '.join(missing)}): {b.install_hint}")
        import vimd_kernels as vk
        fn = {"selective_scan": vk.selective_scan_fn, "causal_conv1d": vk.causal_conv1d_fn,
              "mamba_inner": vk.mamba_inner_fn, "bimamba_inner": vk.bimamba_v2_inner_fn}[op]
        return lambda x: CALL[op](fn, x, backend=provider)
    if provider == "mambapy":
        try:
            import mambapy.pscan  # noqa: F401
        except ImportError as e:
            raise Unsupported(not_installed(e)) from None
        return lambda x: CALL[op](_mambapy_scan, x)
    if provider in ("mamba_ssm", "causal_conv1d", "mamba_ssm_composed"):
        return _peer_fn(provider, op, device)
    raise ValueError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")


# ----------------------------------------------------------------------------- bytes model

def min_bytes(op: str, w: Workload, batch: int, dtype, mode: str) -> int:
    """Bytes the minimal algorithm must move: every input read once, every output written once."""
    e = torch.tensor([], dtype=dtype).element_size()
    d, L, N = w.d_inner, w.L, w.N
    act = batch * d * L * e                                   # one (batch, dim, L) activation
    if op == "selective_scan":
        bc = batch * max(w.groups, 1) * N * L * e
        params = (d * N + 2 * d) * 4                          # A, D, delta_bias (float32)
        fwd = 3 * act + 2 * bc + params + act                 # u, delta, z, B, C, params -> out
        bwd = 4 * act + 2 * bc + params + 3 * act + 2 * bc + params  # + dout -> du, ddelta, dz, dB, dC
    elif op == "causal_conv1d":
        params = d * 5 * 4
        fwd = act + params + act
        bwd = 2 * act + params + act + params                 # x, dout -> dx, dweight, dbias
    else:
        branches = 2 if op == "bimamba_inner" else 1
        xz = 2 * act
        out = batch * L * w.d_model * e
        params = branches * 4 * (d * 4 + d + (w.dt_rank + 2 * N) * d + d * w.dt_rank + d * N + 2 * d) \
            + 4 * w.d_model * d
        fwd = xz + params + out
        bwd = xz + out + params + xz + params                 # xz, dout -> dxz, dweights
    return fwd if mode == "fwd" else fwd + bwd


# ----------------------------------------------------------------------------- jobs

def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Job:
    op: str
    workload: Workload
    mode: str
    dtype: torch.dtype
    provider: str

    def __str__(self) -> str:
        return f"{self.op} {self.workload.name} {_dtype_name(self.dtype)} {self.mode} {self.provider}"


def build_jobs(groups: list[dict], keep: dict | None = None) -> list[Job]:
    """The jobs of ``groups`` in order, each once.  ``keep`` ({"ops": [...], "providers": [...], ...};
    empty lists ignored) keeps only the jobs it names: command-line lists narrow a preset."""
    keep = {k: v for k, v in (keep or {}).items() if v}
    jobs, seen = [], set()
    for g in groups:
        for key in itertools.product(g["ops"], g["shapes"], g["dtypes"], g["modes"], g["providers"]):
            named = dict(zip(("ops", "shapes", "dtypes", "modes", "providers"), key))
            if key in seen or any(named[k] not in v for k, v in keep.items()):
                continue
            seen.add(key)
            op, shape, dtype, mode, provider = key
            jobs.append(Job(op, shapes.get(shape), mode, DTYPES[dtype], provider))
    return jobs


# ----------------------------------------------------------------------------- running

@functools.lru_cache(maxsize=1)  # consecutive jobs (other providers, modes) reuse one input set
def _inputs(op, w, batch, dtype, device):
    if op == "selective_scan":
        return scan_inputs(w, batch, dtype, device)
    if op == "causal_conv1d":
        return conv_inputs(w, batch, dtype, device)
    return mixer_inputs(w, batch, dtype, device, op == "bimamba_inner")


def make_runner(fn: Callable, x: dict, mode: str) -> Callable:
    """fwd: no-grad call.  fwd+bwd: forward then torch.autograd.grad of every output against fixed
    random cotangents (drawn at the first call, not by an extra no-grad call, which for compiled_ref
    would be one more compile), w.r.t. every floating input (no .grad accumulation between runs)."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(x)
        return run
    leaves = {k: v.detach().requires_grad_(True) for k, v in x.items()}
    ins = list(leaves.values())
    cot: list = []

    def run():
        o = fn(leaves)
        o = o if isinstance(o, tuple) else (o,)
        if not cot:
            cot.extend(torch.randn_like(t) for t in o)
        return torch.autograd.grad(o, ins, cot, allow_unused=True)
    return run


def _new_row(job: Job, device: str, batch_override) -> dict:
    w = job.workload
    return dict(op=job.op, shape=w.name, batch=w.batch(device, batch_override), dim=w.d_inner, L=w.L,
                N=w.N, groups=w.groups, mode=job.mode, dtype=_dtype_name(job.dtype), provider=job.provider,
                ms=math.nan, peak_mb=math.nan, gbps=math.nan, pct_copy=math.nan, note="")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _recover(job: Job, device: str) -> None:
    """After an interrupted job: drop a half-built torch.compile, let queued GPU work finish."""
    if job.provider == "compiled_ref":
        _COMPILED.clear()
        torch._dynamo.reset()
    _sync(device)


def run_job(job: Job, device: str, batch_override=None, quick: bool = False, copy_bw: float | None = None,
            budget: common.Budget | None = None) -> dict:
    """Time one job.  Inputs, the first call (torch.compile for compiled_ref) and the timing all run
    under ``budget.job_limit()``; a provider that cannot run, fails or runs out of time gives a row
    with a note instead of a time."""
    budget = budget or common.Budget()
    row = _new_row(job, device, batch_override)
    w, batch = job.workload, row["batch"]
    limit = budget.job_limit()
    stage = "setup"
    try:
        with common.deadline(limit):
            fn = provider_fn(job.provider, job.op, w, batch, device)
            x = _inputs(job.op, w, batch, job.dtype, device)
            run = make_runner(fn, x, job.mode)
            stage = "first call (torch.compile)" if job.provider == "compiled_ref" else "first call"
            run()
            _sync(device)
            stage = "timing"
            t = common.time_fn(run, device, quick)
            peak = common.peak_bytes(run, device)
    except Unsupported as e:
        row["note"] = str(e)
        return row
    except common.TimeUp:
        _recover(job, device)
        row["note"] = (f"skipped: over budget (--budget-s {budget.total_s:g}) in {stage}" if budget.left() <= 0
                       else f"skipped: {stage} exceeded the {limit:.3g} s job limit (--job-timeout-s)")
        return row
    except Exception as e:  # a broken provider must not kill the whole sweep
        row["note"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        return row
    row["ms"] = t * 1e3
    row["peak_mb"] = peak / 2 ** 20
    row["gbps"] = min_bytes(job.op, w, batch, job.dtype, job.mode) / t / 1e9
    if copy_bw:
        row["pct_copy"] = 100 * row["gbps"] * 1e9 / copy_bw
    return row


def run_jobs(jobs: list[Job], device: str, batch_override=None, quick: bool = False,
             copy_bw: float | None = None, budget: common.Budget | None = None) -> list[dict]:
    """Run ``jobs`` in order; once ``budget`` is spent the rest are recorded as skipped, not run."""
    budget = budget or common.Budget()
    rows = []
    for job in jobs:
        if budget.left() <= 0:
            row = _new_row(job, device, batch_override)
            row["note"] = f"skipped: over budget (--budget-s {budget.total_s:g})"
        else:
            row = run_job(job, device, batch_override, quick, copy_bw, budget)
        rows.append(row)
        status = f"{row['ms']:.3f} ms" if not math.isnan(row["ms"]) else row["note"]
        print(f"  [{budget.elapsed():5.0f} s] {job}: {status}", file=sys.stderr, flush=True)
    return rows


def add_speedups(rows: list[dict]) -> None:
    """For each (op, shape, mode, dtype): speed-up of every provider vs each other timed provider."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["op"], r["shape"], r["mode"], r["dtype"]), []).append(r)
    for members in groups.values():
        timed = [r for r in members if not math.isnan(r["ms"])]
        for r in timed:
            parts = []
            for p in timed:
                if p is r:
                    continue
                ratio = p["ms"] / r["ms"]
                r[f"speedup_vs_{p['provider']}"] = ratio
                if p["provider"] in PEERS or r["provider"] in OURS:
                    parts.append(f"{ratio:.2f}x vs {p['provider']}")
            r["speedup"] = ", ".join(parts)


def clustered(rows: list[dict]) -> list[dict]:
    """Rows regrouped so each (op, shape, dtype, mode) is contiguous, in order of first appearance
    (the gpu preset runs triton and the slow peers after cuda and the upstream peers)."""
    order: dict = {}
    for r in rows:
        order.setdefault((r["op"], r["shape"], r["dtype"], r["mode"]), len(order))
    return sorted(rows, key=lambda r: order[(r["op"], r["shape"], r["dtype"], r["mode"])])


# ----------------------------------------------------------------------------- command line

def _split(values) -> list[str]:
    return [v for item in values or [] for v in item.split(",") if v]


def parse_args(argv=None, prog="python -m vimd_kernels.bench.kernels"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--ops", nargs="+", help=f"subset of {', '.join(OPS)}")
    p.add_argument("--shapes", nargs="+", help="workload names (see --list); default per device")
    p.add_argument("--providers", nargs="+", help=f"subset of {', '.join(PROVIDERS)}")
    p.add_argument("--modes", nargs="+", help="fwd and/or fwd+bwd")
    p.add_argument("--dtype", nargs="+", help=f"one or more of {', '.join(DTYPES)} (default float32)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: the preset's, else cuda when available")
    p.add_argument("--batch", type=int, help="override every workload's batch")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="a fixed job list; --ops/--shapes/--providers/--modes/--dtype then narrow it")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="wall-clock budget of all jobs; jobs after it are recorded as skipped (0: none)")
    p.add_argument("--job-timeout-s", type=float, default=120.0,
                   help="limit of any one job, torch.compile's first call included (0: none)")
    p.add_argument("--quick", action="store_true", help="tiny shape, few repetitions (smoke test)")
    p.add_argument("--dry-run", action="store_true", help="print the job list and exit")
    p.add_argument("--out", default=common.DEFAULT_OUT, help=common.OUT_HELP)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--list", action="store_true", help="list workloads and exit")
    return p.parse_args(argv)


def plan(a, device: str) -> list[Job]:
    """The job list of parsed arguments ``a``: the preset's (narrowed by the lists given), else one
    group from the lists and the device's default workloads."""
    cli = dict(ops=_split(a.ops), shapes=_split(a.shapes), modes=_split(a.modes), dtypes=_split(a.dtype),
               providers=_split(a.providers))
    for key, flag, known in (("ops", "--ops", OPS), ("shapes", "--shapes", shapes.WORKLOADS),
                             ("modes", "--modes", MODES), ("dtypes", "--dtype", DTYPES),
                             ("providers", "--providers", PROVIDERS)):
        bad = [v for v in cli[key] if v not in known]
        if bad:
            raise SystemExit(f"{flag}: unknown {bad}; choose from {', '.join(known)}")
    if a.preset:
        jobs = build_jobs(PRESETS[a.preset]["groups"], keep=cli)
    else:
        default_shapes = shapes.QUICK if a.quick else shapes.DEFAULTS[device]
        jobs = build_jobs([_group(cli["ops"] or OPS, cli["shapes"] or default_shapes, cli["modes"] or MODES,
                                  cli["dtypes"] or ["float32"], cli["providers"] or PROVIDERS)])
    if not jobs:
        raise SystemExit("no jobs: the lists given select nothing of the preset")
    return jobs


def main(argv=None, prog="python -m vimd_kernels.bench.kernels") -> list[dict]:
    a = parse_args(argv, prog)
    if a.list:
        for w in shapes.WORKLOADS.values():
            print(f"{w.name:16} dim={w.d_inner:5} L={w.L:6} N={w.N:3} groups={w.groups} "
                  f"batch gpu/cpu={w.gpu_batch}/{w.cpu_batch}  {w.note}")
        return []
    preset = PRESETS.get(a.preset, {})
    device = a.device or preset.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    jobs = plan(a, device)
    if a.dry_run:
        print("\n".join(str(j) for j in jobs) + f"\n# {len(jobs)} jobs on {device}")
        return []
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here (--device cpu runs the plumbing; --dry-run lists the jobs)")

    budget = common.Budget(a.budget_s, a.job_timeout_s)
    meta = common.metadata(device)
    copy_bw = common.copy_bandwidth(device, 1 << (20 if a.quick else 28)) if device == "cuda" else None
    meta.update(copy_gbps=copy_bw / 1e9 if copy_bw else None, budget_s=a.budget_s, job_timeout_s=a.job_timeout_s,
                argv=" ".join(sys.argv[1:] if argv is None else argv))
    print(f"# {meta['summary']}" + (f" | d2d copy {meta['copy_gbps']:.0f} GB/s" if copy_bw else ""), flush=True)

    rows = run_jobs(jobs, device, a.batch, a.quick, copy_bw, budget)
    add_speedups(rows)
    rows = clustered(rows)

    cols = [("op", "op"), ("shape", "shape"), ("batch", "b"), ("dim", "dim"), ("L", "L"), ("N", "N"),
            ("dtype", "dtype"), ("mode", "mode"), ("provider", "provider"), ("ms", "ms"),
            ("peak_mb", "peak MB"), ("gbps", "GB/s")]
    if copy_bw:
        cols.append(("pct_copy", "% copy"))
    cols += [("speedup", "speed-up"), ("note", "note")]
    print(common.format_table(rows, cols))

    out_dir = common.results_dir(a.out, meta["device"])
    stem = "kernels" + (f"-{a.preset}" if a.preset else "") + ("-quick" if a.quick else "")
    paths = common.write_results(out_dir, stem, meta, rows)
    if not a.no_plot:
        png = common.plot_times(os.path.join(out_dir, stem + ".png"), rows, meta["summary"])
        if png:
            paths["png"] = png
    print("# wrote " + ", ".join(paths.values()))
    print(f"# {len(jobs)} jobs in {budget.elapsed():.0f} s (--budget-s {a.budget_s:g}, "
          f"--job-timeout-s {a.job_timeout_s:g})")
    if a.preset == "cpu":
        _print_cpu_summary(rows)
    print("\n".join(skipped_providers(rows)))
    return rows


def skipped_providers(rows: list[dict]) -> list[str]:
    """The run's closing lines: each provider with jobs that were not timed, how many of its jobs,
    and why (the rows' notes, each with its count), in order of first appearance.  Jobs of ops a
    provider does not have (mambapy's conv) are not counted: their rows say so."""
    notes: dict[str, dict[str, int]] = {}
    jobs: dict[str, int] = {}
    for r in rows:
        if not provides(r["provider"], r["op"]):
            continue
        jobs[r["provider"]] = jobs.get(r["provider"], 0) + 1
        if math.isnan(r["ms"]):
            why = notes.setdefault(r["provider"], {})
            note = r["note"].removeprefix("skipped: ") or "not timed"
            why[note] = why.get(note, 0) + 1
    if not notes:
        return ["# skipped providers: none"]
    lines = ["# skipped providers:"]
    for provider, why in notes.items():
        reasons = "; ".join(note if len(why) == 1 else f"{note} ({n})" for note, n in why.items())
        lines.append(f"#   {provider}: {sum(why.values())} of {jobs[provider]} jobs not timed: {reasons}")
    return lines


def _print_cpu_summary(rows: list[dict]) -> None:
    """The cpu preset's line: our cpu backend's time and peak memory against each peer's."""
    by = {r["provider"]: r for r in rows}
    cpu = by.get("cpu")
    r0 = rows[0]
    print(f"# cpu backend: selective_scan fwd+bwd, u=({r0['batch']}, {r0['dim']}, {r0['L']}), "
          f"N={r0['N']}, {r0['dtype']}, variable B/C, z, D, delta_bias, softplus")
    if cpu is None or math.isnan(cpu["ms"]):
        print(f"#   cpu backend not timed: {cpu['note'] if cpu else 'not requested'}")
        return
    for peer in ("mambapy", "ref"):
        p = by.get(peer)
        if p is None or math.isnan(p["ms"]):
            print(f"#   vs {peer}: not timed ({p['note'] if p else 'not requested'})")
            continue
        mem = (f"{p['peak_mb'] / cpu['peak_mb']:.2f}x" if cpu["peak_mb"] > 0 else "n/a")
        print(f"#   cpu {cpu['ms']:.2f} ms vs {peer} {p['ms']:.2f} ms: {p['ms'] / cpu['ms']:.2f}x faster; "
              f"peak memory {cpu['peak_mb']:.1f} MB vs {p['peak_mb']:.1f} MB ({mem} less)")


if __name__ == "__main__":
    main()
