#!/usr/bin/env bash
# The performance bars (tools/gpu/bars.py) and the cuda tests in ONE call of at most 8 minutes on a
# lent H100/H200 that has nothing installed but its image (Python 3.12, torch 2.11.0+cu130, no
# index). Everything that compiles is built beforehand on a CPU machine and carried in .carry/
# (at most CARRY_MAX_MIB = 48 MiB): our extension for HEAD, the peers (mamba_ssm, causal_conv1d;
# float32/bfloat16, sm_90) and two earlier versions of our kernels, each with its module built.
#
#   bash tools/gpu/bar_check.sh prepare    # CPU machine: build and pack what the call carries, then `size`
#   bash tools/gpu/bar_check.sh size       # what .carry holds, against CARRY_MAX_MIB (rc 2 when over)
#   bash tools/gpu/bar_check.sh plan       # the stages' budgets against DEADLINE_S (rc 2 when over)
#   bash tools/gpu/bar_check.sh            # the call: on a CPU machine it stops at the first GPU
#                                          # step with rc 3 (the dry run), naming what needs a GPU,
#                                          # after rehearsing the model stages (5-7) on the CPU at
#                                          # tiny sizes (REHEARSE=0: not)
#
# The call (tools/gpu/gpu_check.sh with these settings; results in $OUT, PACK=1: one archive beside
# the summary, the environment, the benchmark log, the bars, the comparison with the H200 run):
#   1. build: our prebuilt extension, if its sources' hash matches HEAD's (else compiled: ~82 s);
#   2. the carried peers unpacked and imported; the versions unpacked and imported;
#   3. test: pytest -m "cuda and not slow" (the cuda backend), capped at TEST_TIMEOUT_S = 90 s;
#   4. bench: vimd_kernels.bench.kernels --preset gpu narrowed to the bar cells' providers (cuda, triton,
#      mamba_ssm, mamba_ssm_composed, causal_conv1d: no reference, no torch.compile, no mambapy),
#      within BENCH_BUDGET_S = 80 s; then bars.txt, compare.txt (against the H200 run), floors.txt;
#   5. train (tools/gpu/model_check.py): `vimd demo` shortened (every pipeline, a few steps each) and
#      `vimd train` of one bfloat16-autocast step of ViM-Ti/16 224, on the cuda backend: finite
#      losses, checkpoints that reload; TRAIN_BUDGET_S = 60 s;
#   6. model-step: ViM-Ti/16 224 (batch 64) and DVMSR at its training patch (LR 64, batch 16),
#      forward+backward step time and peak memory, float32 and bfloat16 autocast, cuda vs the same
#      model on mamba_ssm + causal_conv1d (then triton), in one process; MODEL_STEP_BUDGET_S = 70 s;
#   7. deploy: `vimd sr` of one image and an AOTInductor CUDA package (`vimd export --device cuda`)
#      against the eager model; DEPLOY_BUDGET_S = 45 s;
#   8. versions: the cuda kernels of scan, conv and the bidirectional mixer at the bar cells, timed
#      for this tree (HEAD) and each packed version one after the other, VERSIONS_BUDGET_S = 10 s
#      each (+ VERSIONS_OVERHEAD_S = 10 s to start); versions/compare_<sha>.txt per version.
# Stage budgets add up to at most DEADLINE_S = 450 s (`plan` adds them up), which bounds the whole
# script (a stage that would start too late is skipped and says so), under the run's 480 s. The
# summary ends with the table of the stages that ran, failed or were skipped, and the model-level
# ratios.
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
# the call's settings (gpu_check.sh reads them); `plan` adds up the budgets
export STAGES=${STAGES:-"build test bench train model-step deploy versions"} DEADLINE_S=${DEADLINE_S:-450} \
  TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-90} BENCH_BUDGET_S=${BENCH_BUDGET_S:-80} \
  TRAIN_BUDGET_S=${TRAIN_BUDGET_S:-60} MODEL_STEP_BUDGET_S=${MODEL_STEP_BUDGET_S:-70} DEPLOY_BUDGET_S=${DEPLOY_BUDGET_S:-45} \
  VERSIONS_BUDGET_S=${VERSIONS_BUDGET_S:-10} VERSIONS_OVERHEAD_S=${VERSIONS_OVERHEAD_S:-10} \
  VERSIONS_OPS=${VERSIONS_OPS:-"selective_scan causal_conv1d bimamba_inner"} \
  BENCH_ARGS=${BENCH_ARGS:-"--providers cuda triton mamba_ssm mamba_ssm_composed causal_conv1d"} \
  PACK=${PACK:-1} REQUIRE_GPU=${REQUIRE_GPU:-1} REHEARSE=${REHEARSE:-1}
# build and preflight: what was carried unpacked and imported (an estimate for the GPU machine; the
# dry run took 13 s here with nothing carried, 75 s with everything carried under heavy load)
PREFLIGHT_S=${PREFLIGHT_S:-30}
BENCH_AFTER_S=${BENCH_AFTER_S:-10}  # bars.txt, compare.txt, floors.txt after the kernel benchmark

# plan: each stage's budget in the order they run, and their sum against DEADLINE_S
plan() {
  local n_versions total=0 row
  n_versions=$(( $(wc -w <<<"$VERSIONS") + 1 ))   # the packed ones and this tree
  for row in "preflight $PREFLIGHT_S" "test $TEST_TIMEOUT_S" "bench $(( BENCH_BUDGET_S + BENCH_AFTER_S ))" \
      "train $TRAIN_BUDGET_S" "model-step $MODEL_STEP_BUDGET_S" "deploy $DEPLOY_BUDGET_S" \
      "versions $(( n_versions * (VERSIONS_BUDGET_S + VERSIONS_OVERHEAD_S) ))"; do
    set -- $row
    [ "$1" = preflight ] || [[ " $STAGES " == *" $1 "* ]] || continue
    total=$(( total + $2 ))
    printf '%-11s %4d s\n' "$1" "$2"
  done
  printf '%-11s %4d s of DEADLINE_S=%d\n' total "$total" "$DEADLINE_S"
  [ "$total" -le "$DEADLINE_S" ] || { echo "bar_check: the stages' budgets add up to ${total}s, over DEADLINE_S=$DEADLINE_S" >&2; return 2; }
}

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
  plan)
    plan ;;
  prepare)
    t=$(date +%s)
    ls .carry/peers/peers-sm"$ARCH"*.tar.xz >/dev/null 2>&1 || ARCH=$ARCH bash tools/gpu/build_peers.sh
    PY=$BUILD_PY ARCH=$ARCH bash tools/gpu/prebuild_ext.sh
    # shellcheck disable=SC2086
    PY=$BUILD_PY ARCH=$ARCH bash tools/gpu/pack_versions.sh $VERSIONS
    echo "bar_check: prepared in $(( $(date +%s) - t ))s"
    size ;;
  run)
    plan >/dev/null 2>&1 || plan || true   # over the deadline: the table and the error, then run anyway
    # on a CPU machine the dry run imports the cp312 modules with the GPU image's stack
    if [ -z "${PY:-}" ] && ! command -v nvidia-smi >/dev/null && [ -x "$BUILD_PY" ]; then export PY=$BUILD_PY; fi
    exec bash tools/gpu/gpu_check.sh ;;
  *)
    echo "usage: bash tools/gpu/bar_check.sh [run | prepare | size | plan]" >&2; exit 2 ;;
esac
