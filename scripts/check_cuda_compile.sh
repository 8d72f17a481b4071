#!/usr/bin/env bash
# Compile-only check of the CUDA kernels with bare nvcc (no torch, no GPU): every csrc/cuda/*.cu
# for each architecture in VIMD_CHECK_ARCHS (default "80 90"), with -Xptxas -v. Fails on any
# compile error or warning-as-error, and on any register spill (non-zero "spill stores" or
# "spill loads"). Prints a per-kernel register summary. Files compile in parallel (JOBS).
# NVCC_EXTRA adds flags (e.g. NVCC_EXTRA=-maxrregcount=32 shows the spill check failing).
# Arguments, if any, replace the file list (e.g. csrc/cuda/selective_scan_bwd.cu).
set -euo pipefail
cd "$(dirname "$0")/.."

ARCHS=${VIMD_CHECK_ARCHS:-"80 90"}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || { echo "check_cuda_compile: nvcc not found" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
shopt -s nullglob
files=(csrc/cuda/*.cu)
[ $# -gt 0 ] && files=("$@")
if [ ${#files[@]} -eq 0 ]; then echo "check_cuda_compile: no csrc/cuda/*.cu files" >&2; exit 1; fi

jobs_list=()
for f in "${files[@]}"; do
  for a in $ARCHS; do jobs_list+=("$f $a"); done
done

compile_one() {
  local f=$1 a=$2 base log
  base=$(basename "$f" .cu)
  log="$TMPDIR_CHECK/${base}.sm_${a}.log"
  if "$NVCC" -c -o "$TMPDIR_CHECK/${base}.sm_${a}.o" -std=c++17 -O3 --use_fast_math \
      --expt-relaxed-constexpr -Icsrc -Werror all-warnings \
      -gencode="arch=compute_${a},code=sm_${a}" -Xptxas -v $NVCC_EXTRA "$f" >"$log" 2>&1; then
    echo "ok" >"$log.rc"
  else
    echo "fail" >"$log.rc"
  fi
}
export -f compile_one
export NVCC NVCC_EXTRA="${NVCC_EXTRA:-}" TMPDIR_CHECK="$tmp"

start=$(date +%s)
printf '%s\n' "${jobs_list[@]}" | xargs -P "$JOBS" -L 1 bash -c 'compile_one $0 $1'
elapsed=$(( $(date +%s) - start ))

status=0
for log in "$tmp"/*.log; do
  name=$(basename "$log" .log)
  if [ "$(cat "$log.rc")" != "ok" ]; then
    echo "FAIL compile: $name"; cat "$log"; status=1; continue
  fi
  # ptxas -v prints, per kernel: "Compiling entry function 'X' for 'sm_NN'", then
  # "N bytes stack frame, S bytes spill stores, L bytes spill loads", then "Used R registers".
  awk -v file="$name" '
    /Compiling entry function/ { match($0, /\x27[^\x27]+\x27/); fn = substr($0, RSTART + 1, RLENGTH - 2) }
    /spill stores/ {
      for (i = 1; i <= NF; i++) { if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) == "stores,") st = $i;
                                  if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) == "loads") ld = $i;
                                  if ($(i+1) == "bytes" && $(i+2) == "stack") sf = $i }
      if (st + 0 > 0 || ld + 0 > 0) { printf "SPILL %s %s: %s bytes spill stores, %s bytes spill loads\n", file, fn, st, ld; bad = 1 }
    }
    /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
      printf "  %-22s regs %3s  stack %3s  %s\n", file, regs, sf, fn }
    END { exit bad }' "$log" >"$log.summary" || status=1
  grep -i "warning" "$log" && status=1
done

echo "== ptxas summary (kernel registers / stack bytes) =="
demangle() {
  if command -v cu++filt >/dev/null; then cu++filt; elif command -v c++filt >/dev/null; then c++filt; else cat; fi
}
cat "$tmp"/*.summary | grep -v '^SPILL' | demangle \
  | sed -E 's/vimd::cuda::\(anonymous namespace\)::|vimd::cuda::_GLOBAL__N__[0-9a-f_]+::|vimd::cuda:://g' | sort -u
grep -h '^SPILL' "$tmp"/*.summary || true
echo "== ${#jobs_list[@]} compiles (${#files[@]} files x archs: $ARCHS) in ${elapsed}s, jobs=$JOBS =="
if [ $status -ne 0 ]; then echo "check_cuda_compile: FAILED"; else echo "check_cuda_compile: OK (no errors, no spills)"; fi
exit $status
