"""Slowdown under load: a selective-scan forward+backward timed alone, then while other processes
run the same kernel on the same cores (what data-loader workers or a second job do to a run). Each
provider's loaded/alone ratio is printed; with P processes sharing C cores a kernel that gives idle
cores back degrades by about the fair share, (P * threads) / C.

    python -m vimd_kernels.bench.load [--providers cpu,mambapy] [--others 2] [--shape cpu-row]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

from vimd_kernels.bench import kernels, shapes


def runner(provider: str, shape: str, batch: int):
    w = shapes.get(shape)
    x = kernels.scan_inputs(w, batch, torch.float32, "cpu")
    fn = kernels.provider_fn(provider, "selective_scan", w, batch, "cpu")
    return kernels.make_runner(fn, x, "fwd+bwd")


def median_ms(fn, seconds: float, min_reps: int = 5) -> float:
    fn()
    fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_reps:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def measure(providers: list[str], others: int, load: str, shape: str, batch: int,
            seconds: float) -> list[dict]:
    """Alone, then with ``others`` processes looping ``load``'s kernel: one row per provider."""
    fns = {p: runner(p, shape, batch) for p in providers}
    alone = {p: median_ms(f, seconds) for p, f in fns.items()}
    cmd = [sys.executable, "-m", "vimd_kernels.bench.load", "--spin", load, "--shape", shape,
           "--batch", str(batch)]
    procs = [subprocess.Popen(cmd) for _ in range(others)]
    try:
        time.sleep(3.0)  # the others import torch and reach their loop
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a load process exited early: {' '.join(cmd)}")
        loaded = {p: median_ms(f, seconds) for p, f in fns.items()}
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return [dict(provider=p, alone_ms=alone[p], loaded_ms=loaded[p], ratio=loaded[p] / alone[p])
            for p in providers]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--providers", default="cpu,mambapy", help="comma-separated providers to time")
    ap.add_argument("--others", type=int, default=2, help="processes running the load kernel")
    ap.add_argument("--load", default="cpu", help="provider the other processes run")
    ap.add_argument("--shape", default="cpu-row", help="workload name (vimd_kernels.bench.shapes)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0, help="timing window per provider and phase")
    ap.add_argument("--spin", metavar="PROVIDER", help=argparse.SUPPRESS)  # a load process
    a = ap.parse_args(argv)
    if a.others < 1:
        ap.error(f"--others must be at least 1, got {a.others}")
    if a.spin:
        fn = runner(a.spin, a.shape, a.batch)
        while True:
            fn()
    providers = [p for p in a.providers.split(",") if p]
    rows = measure(providers, a.others, a.load, a.shape, a.batch, a.seconds)
    print(f"selective_scan fwd+bwd, {a.shape} batch {a.batch}, float32, {torch.get_num_threads()} "
          f"threads; load: {a.others} processes running '{a.load}'")
    for r in rows:
        print(f"{r['provider']:>10s}  alone {r['alone_ms']:9.1f} ms  loaded {r['loaded_ms']:9.1f} ms"
              f"  loaded/alone {r['ratio']:.2f}x")


if __name__ == "__main__":
    main()
