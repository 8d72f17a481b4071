"""Timing, peak memory, device/version metadata and result writers shared by the benchmarks.

Timing: on GPU, ``triton.testing.do_bench`` (median, L2 flushed between runs) when triton is
importable, else CUDA events (median).  On CPU, the median of repeated ``time.perf_counter``
runs after warm-up.

Guards: ``deadline(s)`` interrupts the main thread after ``s`` seconds (SIGALRM raising ``TimeUp``,
a BaseException so library ``except Exception`` blocks cannot swallow it); ``Budget`` is a run's
overall and per-job wall-clock allowance.

Peak memory: on GPU, ``torch.cuda.max_memory_allocated`` above what was allocated before the call.
On CPU, torch's profiler with ``profile_memory=True`` records every allocation/free made through
torch's CPU allocator with the running total since the profile started; the peak is the largest
running total during one call.  It counts every tensor torch allocates (temporaries inside ops,
custom ops, autograd buffers) and not inputs allocated before the call, nor memory a C++ kernel
takes outside torch's allocator (std::vector, thread stacks).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


# ----------------------------------------------------------------------------- timing

def time_cpu(fn: Callable[[], object], warmup: int = 2, min_reps: int = 5, max_reps: int = 200,
             min_time_s: float = 1.0) -> float:
    """Median seconds of ``fn()`` on the CPU (at least ``min_reps`` runs, ~``min_time_s`` total)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_cuda(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median seconds of ``fn()`` on the current CUDA device."""
    try:
        from triton.testing import do_bench
        return do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") / 1e3
    except ImportError:
        pass
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(30):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def time_fn(fn, device: str, quick: bool = False) -> float:
    if device == "cuda":
        return time_cuda(fn, *((5, 20) if quick else (25, 100)))
    return time_cpu(fn, *((1, 3, 3, 0.0) if quick else (2, 5, 200, 1.0)))


# ----------------------------------------------------------------------------- guards

class TimeUp(BaseException):
    """A ``deadline`` expired (BaseException, like KeyboardInterrupt, so that ``except Exception``
    inside torch.compile or a provider cannot turn it into an ordinary error)."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise ``TimeUp`` in the main thread once ``seconds`` have passed (inf: no limit; off the main
    thread, where signals cannot be delivered, no limit either).  It lands when control next returns
    to Python, so a long C++/CUDA call finishes first."""
    if seconds <= 0:
        raise TimeUp(f"no time left ({seconds:.0f} s)")
    if math.isinf(seconds) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeUp(f"{seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Budget:
    """Wall-clock allowance of a run: ``total_s`` for all jobs, ``job_s`` for any one job (0: none).
    ``clock`` is injectable so tests can fake time."""
    total_s: float = 0.0
    job_s: float = 0.0
    clock: Callable[[], float] = time.monotonic
    start: float = field(init=False)

    def __post_init__(self):
        self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed() if self.total_s else math.inf

    def job_limit(self) -> float:
        """Seconds the next job may take: the job cap, or what is left of the run if less."""
        return min(self.left(), self.job_s or math.inf)


# ----------------------------------------------------------------------------- memory

def _cpu_peak_bytes(fn: Callable[[], object]) -> float:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result
    peak = 0
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            peak = max(peak, e.extra_fields.total_allocated)
        stack.extend(e.children)
    return float(peak)


def peak_bytes(fn: Callable[[], object], device: str) -> float:
    """Peak bytes allocated by one call of ``fn`` above what was live before it (NaN if unknown)."""
    try:
        if device == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            result = fn()
            torch.cuda.synchronize()
            del result
            return float(torch.cuda.max_memory_allocated() - base)
        return _cpu_peak_bytes(fn)
    except Exception:  # private profiler API moved: report unknown rather than a wrong number
        return math.nan


def copy_bandwidth(device: str, nbytes: int = 1 << 28) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device)
    return 2 * nbytes / t


# ----------------------------------------------------------------------------- metadata

def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def reported_sm_clock_mhz() -> float | None:
    """The current GPU's highest SM clock as nvidia-smi reports it (None where it cannot)."""
    index = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0] or str(torch.cuda.current_device())
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits",
                              "-i", index], capture_output=True, text=True, timeout=20)
        return float(out.stdout.split()[0]) if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def git_sha() -> str:
    """The commit of the source checkout this file belongs to (``-dirty`` with uncommitted changes);
    "unknown" for an installed package (a file git does not track, even inside some checkout)."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)

    try:
        if git("ls-files", "--error-unmatch", os.path.basename(__file__)).returncode != 0:
            return "unknown"
        sha = git("rev-parse", "HEAD").stdout.strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# The results folder: ``--out`` with ``{device}`` standing for the device's slug.
DEFAULT_OUT = os.path.join("vimd-bench", "{device}")
OUT_HELP = "results folder; {device} stands for the device's name (default: ./vimd-bench/{device})"


def results_dir(out: str, device: str) -> str:
    """``out`` with ``{device}`` replaced by the slug of the device name ``device``."""
    return out.replace("{device}", slug(device))


PEER_PACKAGES = ("mamba_ssm", "causal_conv1d", "mambapy")


def package_version(name: str) -> str | None:
    """Installed version of ``name``; for an in-place build on PYTHONPATH (no dist metadata) the
    folder it is imported from (which names the sdist); None when it is not importable."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        spec = importlib.util.find_spec(name)  # finds, does not import
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    where = spec.submodule_search_locations[0] if spec.submodule_search_locations else spec.origin
    return f"unknown version, from {os.path.dirname(where or '')}"


def metadata(device: str, packages=PEER_PACKAGES) -> dict:
    """Device, versions (torch, CUDA, triton, Python, vimd, the peers), threads, git sha, UTC date, and
    ``summary``: all of it on one line."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta = {"device": device_name(device), "device_type": device, "torch": torch.__version__,
            "cuda": torch.version.cuda, "triton": triton_version, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "vimd": package_version("vimd"), "git_sha": git_sha(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "peers": {p: package_version(p) for p in packages}}
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        meta.update(cuda_capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), sm_clock_mhz=reported_sm_clock_mhz())
    meta["summary"] = summary_line(meta)
    return meta


def summary_line(meta: dict) -> str:
    """One line naming the machine, versions and commit (the header of every table and plot)."""
    dev = meta["device"] + (f" (sm_{meta['cuda_capability'].replace('.', '')}, {meta['sm_count']} SMs, "
                            f"{meta['gpu_memory_gib']} GiB)" if meta.get("cuda_capability") else "")
    parts = [dev, f"torch {meta['torch']}" + (f" CUDA {meta['cuda']}" if meta.get("cuda") else ""),
             f"triton {meta['triton']}", f"vimd {meta.get('vimd')}", f"git {meta['git_sha']}", meta["date"],
             f"threads {meta['threads']}"]
    peers = meta.get("peers") or {}
    if peers:
        parts.append("peers " + ", ".join(f"{k} {v or 'absent'}" for k, v in peers.items()))
    return " | ".join(parts)


# ----------------------------------------------------------------------------- output

def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain-text table; ``columns`` = [(key, header)], floats printed compactly."""
    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    body = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, (_, h) in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line([h for _, h in columns]), line(["-" * w for w in widths])]
                     + [line(b) for b in body])


def write_results(out_dir: str, stem: str, meta: dict, rows: list[dict]) -> dict:
    """CSV (metadata as leading '#' comments) and JSON (``meta``, ``rows``) next to each other;
    returns their paths."""
    import csv

    os.makedirs(out_dir, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    csv_path = os.path.join(out_dir, stem + ".csv")
    with open(csv_path, "w", newline="") as f:
        for k, v in meta.items():
            f.write(f"# {k}: {v}\n")
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    json_path = os.path.join(out_dir, stem + ".json")
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    return {"csv": csv_path, "json": json_path}


def plot_times(path: str, rows: list[dict], title: str) -> str | None:
    """Horizontal bars of median time per (op, shape, mode, dtype), one bar per provider timed
    there (colour = provider), log scale; the figure grows with the bars, about 0.17 in each
    (None when nothing was timed or matplotlib is missing)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.get("ms") is not None and not math.isnan(r["ms"])]
    if not timed:
        return None
    label = lambda r: f"{r['op']} {r['shape']} {r['mode']} {r['dtype']}"  # noqa: E731
    groups: dict[str, list[dict]] = {}
    for r in timed:
        groups.setdefault(label(r), []).append(r)
    providers = list(dict.fromkeys(r["provider"] for r in timed))
    colour = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(providers)}
    n_bars = len(timed) + len(groups)                     # one blank slot between groups
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.17 * n_bars))
    y, ticks = 0.0, []
    for name, rs in groups.items():
        ticks.append((y + (len(rs) - 1) / 2, name))
        for r in rs:
            ax.barh(y, r["ms"], 0.85, color=colour[r["provider"]])
            ax.text(r["ms"], y, f" {r['ms']:.3g}", va="center", fontsize=6)
            y += 1
        y += 1
    ax.set_yticks([t for t, _ in ticks])
    ax.set_yticklabels([n for _, n in ticks], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median time (ms, log)")
    ax.set_title(title, fontsize=8, wrap=True)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colour[p]) for p in providers], labels=providers,
              fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
