#!/usr/bin/env python
"""Ahead-of-time compile of every Triton kernel of vimd_kernels for CUDA targets, with no GPU.

The backends' own host code plans the launches: ``launch_forward``/``launch_backward`` run on meta
tensors with each case's launch configurations (the modules' ``CONFIGS``, or a tiling of them),
each kernel's ``run`` replaced by a recorder, and the SM count set to the target GPU's.  Every
recorded launch is then specialised exactly as Triton's launcher does it (signature, constexprs,
16-byte divisibility, num_warps/num_stages) and compiled down to a cubin with the wheel's ptxas.
Prints registers, spills and shared memory per variant; exits 1 on any compile error, register
spill, shared memory over the target's limit, or a ``*_kernel`` that no case launched.  Spills
well under the 255-register ceiling are ptxas trading a few spills for occupancy (seen in tiny
test tilings and with triton 3.9's ptxas 13); ``--allow-occupancy-spills`` lets those pass.

    python scripts/check_triton_compile.py [--arch 80 90] [--sms 132] [--quick | --cases NAME..]
                                           [--allow-occupancy-spills]

Works with triton 3.6 and 3.9 (uses ``triton.compile``/``ASTSource`` and the launcher's
``create_function_from_signature``/``_pack_args``, which both versions share).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from unittest import mock

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("check_triton_compile: unset TRITON_INTERPRET (it replaces the compiler)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.compiler.compiler import make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

from vimd_kernels.causal_conv1d import triton as conv  # noqa: E402
from vimd_kernels.selective_scan import triton as scan  # noqa: E402

MODULES = (scan, conv)
SHARED_LIMIT = {80: 166912, 90: 232448, 100: 232448}  # max smem per block; others: 101376
F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64


# ----------------------------------------------------------------------------- cases

def tiled(module, tiling: dict) -> dict:
    """The module's CONFIGS with the fields of ``tiling`` set in every kernel's config."""
    return {k: dataclasses.replace(c, **tiling) for k, c in module.CONFIGS.items()}


@dataclass(frozen=True)
class Scan:
    """selective_scan forward + backward.  b, c: 'var', 'g<G>' (grouped) or 'const'."""
    name: str
    batch: int
    dim: int
    L: int
    N: int = 16
    dtype: torch.dtype = F32
    b: str = "var"
    c: str = "var"
    z: bool = True
    opts: bool = True  # D, delta_bias and softplus, as the mixers pass them
    initial_state: bool = False
    reverse: bool = False
    tiling: dict = field(default_factory=dict)  # LaunchConfig fields (both kernels)

    def launch(self):
        m = dict(device="meta")
        act = dict(dtype=self.dtype, **m)
        w = dict(dtype=F64 if self.dtype == F64 else F32, **m)  # weights stay fp32 under AMP
        b, d, L, N = self.batch, self.dim, self.L, self.N

        def bc(kind):
            if kind == "const":
                return torch.empty(d, N, **w)
            return torch.empty((b, N, L) if kind == "var" else (b, int(kind[1:]), N, L), **act)

        u, delta, dout = (torch.empty(b, d, L, **act) for _ in range(3))
        A, D, db = torch.empty(d, N, **w), torch.empty(d, **w), torch.empty(d, **w)
        if not self.opts:
            D = db = None
        z = torch.empty(b, d, L, **act) if self.z else None
        h0 = torch.empty(b, d, N, **w) if self.initial_state else None
        args = (u, delta, A, bc(self.b), bc(self.c), D, z, db, h0)
        cfg = tiled(scan, self.tiling)
        scan.launch_forward(*args, self.opts, self.reverse, config=cfg["fwd"])
        scan.launch_backward(*args, dout, h0, self.opts, self.reverse, config=cfg["bwd"])


@dataclass(frozen=True)
class Conv:
    """causal_conv1d forward + backward (weights in fp32, as the mixer passes them)."""
    name: str
    batch: int
    dim: int
    L: int
    width: int
    dtype: torch.dtype = F32
    bias: bool = True
    silu: bool = True
    reverse: bool = False
    tiling: dict = field(default_factory=dict)  # LaunchConfig fields (both kernels)

    def launch(self):
        m = dict(device="meta")
        w = dict(dtype=F64 if self.dtype == F64 else F32, **m)
        x = torch.empty(self.batch, self.dim, self.L, dtype=self.dtype, **m)
        weight = torch.empty(self.dim, self.width, **w)
        bias = torch.empty(self.dim, **w) if self.bias else None
        cfg = tiled(conv, self.tiling)
        conv.launch_forward(x, weight, bias, self.silu, self.reverse, config=cfg["fwd"])
        conv.launch_backward(x, weight, bias, torch.empty_like(x), self.silu, self.reverse,
                             config=cfg["bwd"])


# ViM-Ti/S: dim 384/768, L 197 (stride 16) / 730 (stride 8); SR (DVMSR, 256x256 LR): dim 120, L 65536;
# SS2D: 4 routes x 120 channels, grouped B/C; the small ones are the GPU tests' odd shapes/tilings.
CASES = [
    Scan("vim-ti", 16, 384, 197, dtype=BF16),
    Scan("vim-s-bwd-dir", 2, 768, 730, dtype=F16, reverse=True),  # chunked over L
    Scan("sr", 1, 120, 65536, initial_state=True),  # chunked over L, with h0
    Scan("ss2d", 16, 480, 4096, dtype=BF16, b="g4", c="g4", z=False),
    Scan("constB-N10", 2, 64, 197, N=10, b="const", z=False),
    Scan("L1-N1-constC", 2, 64, 1, N=1, c="const", opts=False, initial_state=True),
    Scan("tiny-f64", 1, 3, 9, N=2, dtype=F64, initial_state=True, reverse=True,
         tiling=dict(block_d=2, seg=2, chunk_len=4)),
    *[Conv(f"w{w}", 16, *shape, w, dtype=dt, reverse=w % 2 == 1)
      for w, shape, dt in zip(range(2, 9), [(384, 197), (768, 730), (120, 65536)] * 3,
                              [F32, F16, BF16] * 3)],
    Conv("plain", 2, 384, 197, 4, bias=False, silu=False),
    Conv("tiny-f64", 1, 3, 9, 4, dtype=F64, reverse=True, tiling=dict(block_d=2, block_t=4)),
]
QUICK = ["vim-s-bwd-dir", "sr", "w4"]  # every kernel, real tilings, fp16/fp32/bf16: ~10 s


# ----------------------------------------------------------------------------- capture launches

def all_kernels():
    return [(mod, name, fn) for mod in MODULES for name, fn in vars(mod).items()
            if isinstance(fn, JITFunction) and name.endswith("_kernel")]


def record_launches(case, sms: int) -> list:
    """(kernel, args, kwargs) of every launch ``case`` makes, planned for a GPU with ``sms`` SMs."""
    launches = []

    def recorder(fn):
        return lambda *args, grid, warmup, **kwargs: launches.append((fn, args, kwargs))

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(scan, "device_sms", lambda _: sms))  # the scan's planner
        for _, _, fn in all_kernels():  # kernel[grid](...) calls kernel.run(...)
            stack.enter_context(mock.patch.object(fn, "run", recorder(fn)))
        case.launch()
    return launches


def specialise(fn, args, kwargs, backend):
    """What JITFunction.run would hand to the compiler for this launch."""
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, options = binder(*args, **kwargs)
    return fn._pack_args(backend, kwargs, bound, spec, options)


# ----------------------------------------------------------------------------- compile

@dataclass
class Result:
    kernel: str
    case: str
    arch: int
    key: str
    regs: int = 0
    spill_bytes: int = 0
    stack: int = 0
    shared: int = 0
    warps: int = 0
    seconds: float = 0.0
    error: Optional[str] = None
    allow_occupancy_spills: bool = False

    @property
    def occupancy_spill(self) -> bool:
        """Spills well under the register ceiling: ptxas chose them to fit more blocks per SM."""
        return self.spill_bytes > 0 and self.regs + 8 < min(255, 65536 // (32 * self.warps))

    @property
    def failed(self) -> bool:
        spill = self.spill_bytes > 0 and not (self.allow_occupancy_spills and self.occupancy_spill)
        return bool(self.error or spill or self.shared > SHARED_LIMIT.get(self.arch, 101376))


_PTXAS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
                    r".*?Used (\d+) registers", re.S)


def short_key(fn, sig: dict, constexprs: dict) -> str:
    """First argument's type, then the constexprs (ints equal to 1 included: Triton specialises
    them); absent optional pointers (None) left out."""
    names = fn.arg_names
    parts = [f"{names[0]}:{sig[names[0]]}"]
    for (i, *_), v in sorted(constexprs.items()):
        if v is not None:
            parts.append(f"{names[i]}={str(v).replace('triton.language.', '')}")
    return " ".join(parts)


def compile_one(fn, case, arch: int, sig, constexprs, attrs, options, allow_occ: bool) -> Result:
    target = GPUTarget("cuda", arch, 32)
    res = Result(fn.__name__, case.name, arch, short_key(fn, sig, constexprs),
                 warps=options.num_warps, allow_occupancy_spills=allow_occ)
    log = io.StringIO()
    t = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            ck = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=target,
                                options=options.__dict__)
    except Exception as e:  # noqa: BLE001 - every compile error is a finding
        res.error = f"{type(e).__name__}: {e}"[:2000]
        return res
    res.seconds = time.perf_counter() - t
    res.shared = ck.metadata.shared
    m = _PTXAS.search(log.getvalue())
    if m is None:
        res.error = "no ptxas -v report in the log"
        return res
    stack, stores, loads, regs = map(int, m.groups())
    res.regs, res.stack, res.spill_bytes = regs, stack, stores + loads
    return res


def check(cases, archs, sms: int, allow_occupancy_spills=False, out=print) -> list[Result]:
    """Compile every distinct launch of ``cases`` for every arch; returns the results."""
    seen, jobs = set(), []
    for case in cases:
        for fn, args, kwargs in record_launches(case, sms):
            for arch in archs:
                backend = make_backend(GPUTarget("cuda", arch, 32))
                options, sig, constexprs, attrs = specialise(fn, args, kwargs, backend)
                key = (fn.__name__, arch, repr(sig), repr(constexprs), repr(attrs), repr(options))
                if key not in seen:
                    seen.add(key)
                    jobs.append((fn, case, arch, sig, constexprs, attrs, options))
    launched = {j[0].__name__ for j in jobs}
    results = [Result(name, "-", 0, "", error="never launched by any case")
               for _, name, _ in all_kernels() if name not in launched]
    # a private cache so ptxas always runs (its -v log is where registers and spills come from)
    with tempfile.TemporaryDirectory() as cache, knobs.cache.scope(), knobs.nvidia.scope():
        knobs.cache.dir, knobs.nvidia.dump_ptxas_log = cache, True
        for job in jobs:
            r = compile_one(*job, allow_occupancy_spills)
            results.append(r)
            out(fmt(r))
    return results


def fmt(r: Result) -> str:
    status = "FAIL" if r.failed else "ok"
    head = f"{status:4} sm_{r.arch} {r.kernel:20} {r.case:14}"
    if r.error:
        return f"{head} {r.error}"
    note = " (occupancy spill)" if r.occupancy_spill else ""
    return (f"{head} regs={r.regs:3} spill={r.spill_bytes}B{note} stack={r.stack}B "
            f"smem={r.shared}B warps={r.warps} {r.seconds:4.1f}s  {r.key}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities")
    ap.add_argument("--sms", type=int, default=132, help="SM count the launch planning assumes")
    ap.add_argument("--allow-occupancy-spills", action="store_true",
                    help="pass spills made well under the 255-register ceiling (a ptxas choice)")
    ap.add_argument("--cases", nargs="+", default=[c.name for c in CASES],
                    help="case names (default: all)")
    ap.add_argument("--quick", action="store_true", help=f"only the cases {QUICK}")
    a = ap.parse_args(argv)
    names = QUICK if a.quick else a.cases
    cases = [c for c in CASES if c.name in names]
    print(f"triton {triton.__version__}, torch {torch.__version__}, archs {a.arch}, {a.sms} SMs")
    t = time.perf_counter()
    results = check(cases, a.arch, a.sms, a.allow_occupancy_spills)
    bad = [r for r in results if r.failed]
    ok = [r for r in results if not r.error]
    regs = ", ".join(f"{k} <= {max(r.regs for r in ok if r.kernel == k)}"
                     for k in sorted({r.kernel for r in ok}))
    print(f"{len(results)} variants in {time.perf_counter() - t:.0f}s; max registers: {regs}")
    for r in bad:
        print(fmt(r), file=sys.stderr)
    print(f"{len(bad)} failed" if bad else "all compiled, no failing spills")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
