#!/usr/bin/env bash
# The performance bars (tools/gpu/bars.py) and the cuda tests in ONE call of at most 8 minutes on a
# lent H100/H200 that has nothing installed but its image (Python 3.12, torch 2.11.0+cu130, no
# index). Everything that compiles is built beforehand on a CPU machine and carried in .carry/
# (at most CARRY_MAX_MIB = 48 MiB): our extension for HEAD, the peers (mamba_ssm, causal_conv1d;
# float32/bfloat16, sm_90) and two earlier versions of our kernels, each with its module built.
#
#   bash tools/gpu/bar_check.sh prepare    # CPU machine: build and pack what the call carries, then `size`
#   bash tools/gpu/bar_check.sh size       # what .carry holds, against CARRY_MAX_MIB (rc 2 when over)
#   bash tools/gpu/bar_check.sh            # the call: on a CPU machine it stops at the first GPU
#                                          # step with rc 3 (the dry run), naming what needs a GPU
#
# The call (tools/gpu/gpu_check.sh with these settings; results in $OUT, PACK=1: one archive beside
# the summary, the environment, the benchmark log, the bars, the comparison with the H200 run):
#   1. build: our prebuilt extension, if its sources' hash matches HEAD's (else compiled: ~82 s);
#   2. the carried peers unpacked and imported; the versions unpacked and imported;
#   3. test: pytest -m "cuda and not slow" (the cuda backend), capped at TEST_TIMEOUT_S = 90 s;
#   4. bench: vimd_kernels.bench.kernels --preset gpu narrowed to the bar cells' providers (cuda, triton,
#      mamba_ssm, mamba_ssm_composed, causal_conv1d: no reference, no torch.compile, no mambapy),
#      within BENCH_BUDGET_S = 120 s; then bars.txt, compare.txt (against the H200 run), floors.txt;
#   5. versions: the cuda kernels of scan, conv and the bidirectional mixer at the bar cells, timed
#      for this tree (HEAD) and each packed version one after the other, VERSIONS_BUDGET_S = 30 s
#      each; versions/compare_<sha>.txt per version.
# Stage budgets add up to about 6 minutes; DEADLINE_S = 450 s bounds the whole script (a stage that
# would start too late is skipped and says so), under the run's 480 s.
#
# The versions timed beside HEAD:
#   2d35d04  the commit the H200 run measured (benchmarks/results/nvidia-h200/README.md: "the
#            kernels and benchmarks of main at 2d35d04"; its CSV's git_sha 2d35d04...-dirty)
#   7148a4c  the commit before the issue that asked for this check: main's last commit of the
#            house-cleaning (2026-12-06 05:17, "demo: report the kernel backend each run used on its
#            device"), from which the issue's work branched
# (VERSIONS overrides them.)
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSIONS=${VERSIONS:-"2d35d04 7148a4c"}
CARRY_MAX_MIB=${CARRY_MAX_MIB:-48}
BUILD_PY=${BUILD_PY:-.gpu_cache/py312/bin/python}   # the GPU image's stack on this machine
ARCH=${ARCH:-90}

size() {
  local total=0 n f
  for f in $(find "${CARRY:-.carry}" -type f 2>/dev/null | sort); do
    n=$(stat -c %s "$f"); total=$(( total + n ))
    printf '%10d  %s\n' "$n" "$f"
  done
  printf '%10d  total (%s MiB; at most %s MiB)\n' "$total" "$(awk "BEGIN {printf \"%.1f\", $total / 1048576}")" "$CARRY_MAX_MIB"
  [ "$total" -le $(( CARRY_MAX_MIB * 1048576 )) ] || { echo "bar_check: ${CARRY:-.carry} is over $CARRY_MAX_MIB MiB" >&2; return 2; }
}

case "${1:-run}" in
  size)
    size ;;
  prepare)
    t=$(date +%s)
    ls .carry/peers/peers-sm"$ARCH"*.tar.xz >/dev/null 2>&1 || ARCH=$ARCH bash tools/gpu/build_peers.sh
    PY=$BUILD_PY ARCH=$ARCH bash tools/gpu/prebuild_ext.sh
    # shellcheck disable=SC2086
    PY=$BUILD_PY ARCH=$ARCH bash tools/gpu/pack_versions.sh $VERSIONS
    echo "bar_check: prepared in $(( $(date +%s) - t ))s"
    size ;;
  run)
    export STAGES=${STAGES:-"build test bench versions"} DEADLINE_S=${DEADLINE_S:-450} \
      TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-90} BENCH_BUDGET_S=${BENCH_BUDGET_S:-120} \
      VERSIONS_BUDGET_S=${VERSIONS_BUDGET_S:-30} VERSIONS_OPS=${VERSIONS_OPS:-"selective_scan causal_conv1d bimamba_inner"} \
      BENCH_ARGS=${BENCH_ARGS:-"--providers cuda triton mamba_ssm mamba_ssm_composed causal_conv1d"} \
      PACK=${PACK:-1} REQUIRE_GPU=${REQUIRE_GPU:-1}
    # on a CPU machine the dry run imports the cp312 modules with the GPU image's stack
    if [ -z "${PY:-}" ] && ! command -v nvidia-smi >/dev/null && [ -x "$BUILD_PY" ]; then export PY=$BUILD_PY; fi
    exec bash tools/gpu/gpu_check.sh ;;
  *)
    echo "usage: bash tools/gpu/bar_check.sh [run | prepare | size]" >&2; exit 2 ;;
esac
