"""Static SASS view of the CUDA kernels' loops, without a GPU.

Compiles one csrc/cuda/*.cu file for one architecture with nvcc (-cubin), disassembles it with
cuobjdump (from PATH, else the copy bundled with Triton) and prints, for every kernel whose name
contains FILTER, each loop (a backward branch) with its instruction count and how many of those
are MUFU (exp2 and friends), shuffles, shared and global memory accesses. A loop's count is its
static size: it includes branches not taken on the hot path (e.g. unaligned-row staging).

  python -m tools.gpu.sass_loops selective_scan_fwd 'scan_fwd_kernelIfLb0ELb1'
  python -m tools.gpu.sass_loops selective_scan_bwd 'scan_bwd_kernelIfLb1' --arch 80

--cubin PATH reads an already compiled cubin instead (e.g. a peer's kernels, for comparison; the
file argument is then ignored).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.exists(bundled):
            return bundled
    except ImportError:
        pass
    sys.exit("sass_loops: cuobjdump not found (CUDA toolkit or Triton's bundled copy)")


def kernels(sass: str):
    """(mangled name, [(address, instruction)]) per function."""
    for chunk in sass.split("Function : ")[1:]:
        name = chunk.split("\n", 1)[0].strip()
        ins = [(int(m.group(1), 16), m.group(2).strip())
               for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", chunk)]
        yield name, ins


def opcode(text: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def loops(ins):
    """(start, end, opcode counts) per backward branch (a loop), in address order of the branch;
    the warp-divergence branches (BRA.DIV) are not loops."""
    for addr, text in ins:
        m = re.search(r"\bBRA\s+(0x[0-9a-f]+)", text)
        if not m or "DIV" in text or int(m.group(1), 16) >= addr:
            continue
        start = int(m.group(1), 16)
        yield start, addr, collections.Counter(opcode(t) for a, t in ins if start <= a <= addr)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.gpu.sass_loops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="csrc/cuda/<file>.cu without the extension")
    ap.add_argument("filter", nargs="?", default="", help="substring of the mangled kernel names")
    ap.add_argument("--arch", default="90")
    ap.add_argument("--cubin", help="disassemble this cubin instead of compiling FILE")
    args = ap.parse_args()
    if args.cubin:
        if not os.path.isfile(args.cubin):
            sys.exit(f"sass_loops: --cubin {args.cubin!r} is not a file")
        sass = subprocess.run([cuobjdump(), "-sass", args.cubin], check=True, capture_output=True, text=True).stdout
    else:
        src = os.path.join(ROOT, "csrc", "cuda", args.file + ".cu")
        if not os.path.isfile(src):
            sys.exit(f"sass_loops: no {src} (FILE names a csrc/cuda/*.cu file without the extension)")
        with tempfile.TemporaryDirectory() as tmp:
            cubin = os.path.join(tmp, "k.cubin")
            subprocess.run(["nvcc", "-cubin", "-o", cubin, "-std=c++17", "-O3", "--use_fast_math",
                            "--expt-relaxed-constexpr", f"-gencode=arch=compute_{args.arch},code=sm_{args.arch}",
                            src], check=True)
            sass = subprocess.run([cuobjdump(), "-sass", cubin], check=True, capture_output=True, text=True).stdout
    for name, ins in kernels(sass):
        if args.filter not in name:
            continue
        print(f"{name}: {len(ins)} instructions")
        for start, addr, ops in loops(ins):
            print(f"  loop {start:#07x}..{addr:#07x}: {sum(ops.values()):5d} instr, MUFU {ops['MUFU']}, "
                  f"SHFL {ops['SHFL']}, LDS/STS {ops['LDS'] + ops['STS']}, LDG/STG {ops['LDG'] + ops['STG']}, "
                  f"RED {ops['RED'] + ops['REDG'] + ops['ATOM'] + ops['ATOMG']}, BAR {ops['BAR']}")


if __name__ == "__main__":
    main()
