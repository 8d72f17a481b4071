#!/usr/bin/env bash
# One-shot GPU check (see /work/shared/GPU.md): build the extension for this GPU only, run the
# CUDA test suite, then the kernel benchmarks; logs and results go to $OUT (default ./gpu_out).
# Peers: if .carry/peers/*.tar.gz (mamba_ssm / causal_conv1d sdists) are present, they are built
# in the background while our build and tests run, and the benchmarks wait for them (bounded).
#
#   bash benchmarks/gpu_check.sh            # everything
#   STAGES="build test" bash benchmarks/gpu_check.sh
# Env: OUT, STAGES (build peers test bench), ARCH (default: this GPU's, e.g. 90), MAX_JOBS,
#      PEER_WAIT_S (how long the benchmarks wait for the peers' build, default 300),
#      PYTEST_ARGS (extra pytest arguments), BENCH_ARGS (extra benchmark arguments).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
STAGES=${STAGES:-"build peers test bench"}
MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 ))s; }

{
  echo "date: $(date -u +%FT%TZ)"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  nvcc --version 2>&1 | tail -1
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

ARCH=${ARCH:-$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')" 2>/dev/null || echo 90)}

peer_pid=""
if has peers; then
  shopt -s nullglob
  peers=(.carry/peers/*.tar.gz)
  if [ ${#peers[@]} -gt 0 ]; then
    # Their own builds, for this GPU only; never part of this repository.
    ( MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST="${ARCH%?}.${ARCH: -1}" \
      MAX_JOBS=$MAX_JOBS $PY -m pip install --no-build-isolation --no-deps --no-index "${peers[@]}" \
      >"$OUT/peers_build.log" 2>&1; echo $? >"$OUT/peers_build.rc" ) &
    peer_pid=$!
    note "peers: building ${#peers[@]} sdist(s) in the background (pid $peer_pid, log peers_build.log)"
  else
    note "peers: none carried (.carry/peers/*.tar.gz); mamba_ssm/causal_conv1d columns will be missing"
  fi
fi

build_rc=skip
if has build; then
  bstart=$(date +%s)
  TORCH_CUDA_ARCH_LIST="${ARCH%?}.${ARCH: -1}" VIMD_CUDA_ARCHS=$ARCH MAX_JOBS=$MAX_JOBS \
    $PY -m pip install --no-build-isolation --no-deps -v -e . >"$OUT/build.log" 2>&1
  build_rc=$?
  note "build: rc=$build_rc in $(( $(date +%s) - bstart ))s (sm_$ARCH; log build.log)"
  grep -E "spill (stores|loads)" "$OUT/build.log" | grep -v " 0 bytes spill stores, 0 bytes spill loads" | head -5
  $PY -c "import vimd_kernels as v; from vimd_kernels import _C; print('available backends:', v.available_backends()); print('has cuda ops:', hasattr(_C, 'selective_scan_fwd_cuda'))" 2>&1 | tee -a "$summary"
fi

test_rc=skip
if has test; then
  $PY -m pytest -m cuda -x -q -p no:cacheprovider --junitxml="$OUT/pytest_cuda.xml" ${PYTEST_ARGS:-} tests \
    >"$OUT/pytest_cuda.log" 2>&1
  test_rc=$?
  note "tests (-m cuda): rc=$test_rc -- $(tail -1 "$OUT/pytest_cuda.log")"
  [ $test_rc -ne 0 ] && grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/pytest_cuda.log" | head -20 | tee -a "$summary"
fi

bench_rc=skip
if has bench; then
  if [ -n "$peer_pid" ]; then
    waited=0
    while kill -0 "$peer_pid" 2>/dev/null && [ $waited -lt "${PEER_WAIT_S:-300}" ]; do sleep 10; waited=$((waited + 10)); done
    note "peers: $( [ -f "$OUT/peers_build.rc" ] && echo "build rc=$(cat "$OUT/peers_build.rc")" || echo "still building after ${waited}s wait; benchmarking without them")"
  fi
  $PY -m benchmarks.kernels --device cuda --out "$OUT/bench" ${BENCH_ARGS:-} >"$OUT/bench_kernels.log" 2>&1
  bench_rc=$?
  note "bench (benchmarks.kernels): rc=$bench_rc (log bench_kernels.log, results bench/)"
fi

echo
echo "================ GPU check summary ($(elapsed)) ================"
head -3 "$OUT/env.txt"
cat "$summary"
[ -f "$OUT/bench_kernels.log" ] && { echo "--- benchmark table (tail) ---"; tail -40 "$OUT/bench_kernels.log"; }
[ "$build_rc" = 0 ] || [ "$build_rc" = skip ] || exit 1
[ "$test_rc" = 0 ] || [ "$test_rc" = skip ] || exit 1
exit 0
