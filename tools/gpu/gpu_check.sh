#!/usr/bin/env bash
# One-shot GPU check (see /work/shared/GPU.md): build the extension for this GPU only, run the
# CUDA test suite (up to 25 failures reported, not just the first), then the kernel and model
# benchmarks; logs and results go to $OUT.
# Everything is bounded by DEADLINE_S (default 570 s, under the lent machine's 10-minute limit):
# a stage that would start too late is skipped and says so. Build outputs (build/ and the peers'
# in-place builds under .gpu_cache/) stay on a warm machine, so a second call resumes quickly:
#
#   bash tools/gpu/gpu_check.sh          # one call: build, peers, cuda tests, --preset gpu, Triton tests
#   STAGES="build peers bench profile models" bash tools/gpu/gpu_check.sh  # a second call
#
# Device time: the default stages fit one call of the 10-minute limit (estimates from per-file
# compile times measured on a CPU machine: our sm_90 build ~1.5 min; the peers built for sm_90
# only ~2.5 min on 16 cores, in the background; all their default targets would take ~9x that).
# `test` runs the cuda backend's tests (in parallel with pytest-xdist when it imports: most of
# their time is the sequential reference's kernel launches); the Triton backend's GPU tests
# (`test-triton`: their JIT compiles take minutes) run after the benchmarks.
#
# Peers (mamba_ssm, causal_conv1d) are not built by this repository: if an executable
# .carry/build_peers.sh exists (yours, carried with the working tree), the `peers` stage runs it
# in the background and the benchmarks import what it built from PEER_PATH (default: the in-place
# builds under .gpu_cache/peers/). Without it, their columns say "not installed". How to build
# them for one architecture: tools/gpu/README.md, "The peers on a lent GPU".
# Prebuilt extension: when .carry/ours holds one built by tools/gpu/prebuild_ext.sh from these very
# sources (hash check), for this GPU's architecture and this Python, the `build` stage unpacks it
# instead of compiling (carry .carry with the working tree).
# Optional stage `tune`: sweeps the Triton kernels' tile knobs (tools/gpu/tune_triton.py).
# Optional stage `plan`: times the cuda scan's forward chunk splits and the backward's row walk
# against forced alternatives (tools/gpu/scan_plan.py), to check the launch planner's cost model.
# Optional stage `versions`: earlier commits' kernels timed beside this tree's in the same call
# (packed first by tools/gpu/pack_versions.sh REV ... into .carry/versions/; built in the background
# during the tests; results and compare_runs tables in versions/).
# Optional stage `sanitize`: compute-sanitizer memcheck, racecheck and synccheck over one small
# `cuda` test of every kernel and phase (GPU_SANITIZE_CASES in tests/kernels/test_cuda_racecheck.py).
# Optional stage `ncu`: Nsight Compute (SpeedOfLight, Occupancy, WarpStateStats, ...) of our kernels
# and the peers' at NCU_JOBS (profile_kernels' jobs, run once each): ncu_details.txt.
# Optional stage `test-slow`: the `slow` cuda tests (real shapes against the reference's loop over L).
# Optional stages `train`, `model-step`, `deploy` (tools/gpu/model_check.py, after the kernel
# benchmark, before the versions): a shortened `vimd demo` and one bfloat16-autocast step of ViM-Ti
# on the cuda backend (finite losses, checkpoints that reload); ViM-Ti/16 224 and DVMSR's training
# step, time and peak memory, on our cuda backend vs the same model on mamba_ssm + causal_conv1d
# (and triton), float32 and bfloat16; `vimd sr` of one image and an AOTInductor CUDA package against
# eager. Budgets TRAIN_BUDGET_S, MODEL_STEP_BUDGET_S, DEPLOY_BUDGET_S (each stage is killed at its
# budget; its steps that would not fit are skipped and say so). Heavy outputs (checkpoints,
# packages) go to MODEL_WORK (default .gpu_cache/model_check), the logs and results to $OUT.
# With REHEARSE=1 on a machine without a GPU, the dry run runs these three stages on the CPU at
# tiny sizes (budgets x REHEARSE_FACTOR, default 2) before it stops, and prints the summary.
# Every stage that ran, failed or was skipped is listed in $OUT/stages.tsv; the summary ends with
# that table and the model-level ratios (python -m tools.gpu.model_check summary $OUT).
# Carried peers: .carry/peers/peers-sm<ARCH><suffix>.tar.xz from tools/gpu/build_peers.sh (mamba_ssm and
# causal_conv1d built on a CPU machine for this GPU's architecture and Python) is unpacked into
# .gpu_cache/peers/prebuilt and put on PYTHONPATH; a pack for another architecture or Python is named
# and left out.
# Dry run and the GPU gate: everything before the first step that needs a GPU (unpacking and
# importing the carried extensions, unpacking the versions) runs first; then, with DRY_RUN=1, or
# with REQUIRE_GPU=1 where no GPU is visible, the script stops there (rc 3 without a GPU, naming
# the steps that need one; rc 4 when a carried piece failed its check; rc 0 on a GPU with DRY_RUN=1).
# tools/gpu/bar_check.sh is the one-call check of the performance bars built on this script.
# Env: OUT, STAGES (build peers test test-slow sanitize bench versions test-triton profile ncu models plan tune), ARCH (default:
#      this GPU's, e.g. 90), MAX_JOBS, DEADLINE_S, TEST_WORKERS (default 8), TEST_TIMEOUT_S (cap per test set), PACK, PYTEST_ARGS, BENCH_ARGS, PEER_PATH,
#      BASELINE_CSV (a committed --preset gpu run the bench stage is compared with: compare.txt; the
#      run's bars: bars.txt, tools/gpu/bars.py; its floors: floors.txt, tools/gpu/floors.py), CARRY (default .carry), VERSIONS_DIR (default $CARRY/versions), VERSIONS_OPS (the ops
#      the versions stage times; default "selective_scan causal_conv1d"), VERSIONS_BUDGET_S (each
#      version's benchmark budget, default 60), VERSIONS_OVERHEAD_S (the time a version needs beyond
#      its budget to be started, default 15), TRAIN_BUDGET_S, MODEL_STEP_BUDGET_S, DEPLOY_BUDGET_S,
#      MODEL_WORK, DRY_RUN, REQUIRE_GPU, REHEARSE, REHEARSE_FACTOR.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAGES=${STAGES:-"build peers test bench test-triton"}
MAX_JOBS=${MAX_JOBS:-16}
DEADLINE_S=${DEADLINE_S:-570}
PY=${PY:-python3}
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac   # stages cd elsewhere
CARRY=${CARRY:-.carry}   # what the call carried: ours/, peers/, versions/
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
: >"$OUT/stages.tsv"
# stage_log NAME STATUS SECONDS DETAIL: one line of the closing stage table (STATUS ran | FAILED | skipped)
stage_log() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "${3:--}" "${4:-}" >>"$OUT/stages.tsv"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }
t0=$(date +%s)
left() { echo $(( DEADLINE_S - ($(date +%s) - t0) )); }
# enough_time NAME SECONDS: true when SECONDS are left before the deadline, else notes the skip.
enough_time() {
  [ "$(left)" -ge "$2" ] && return 0
  note "$1: skipped, only $(left)s left of DEADLINE_S=$DEADLINE_S (needs ~$2s)"
  stage_log "$1" skipped - "only $(left)s left of DEADLINE_S=$DEADLINE_S (needs ~$2s)"; return 1
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  nvcc --version 2>&1 | tail -1
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  $PY -c "import triton; print('triton', triton.__version__)" 2>&1
  $PY -c "import setuptools, sys; print('setuptools', setuptools.__version__)" 2>&1 | tail -1
  for f in "$CARRY"/ours/commit "$CARRY"/peers/PEERS; do [ -f "$f" ] && sed "s|^|$f: |" "$f"; done
  ls "${VERSIONS_DIR:-$CARRY/versions}" 2>/dev/null | sed 's|^|versions packed: |'
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
preflight_failed=()   # carried pieces that failed their check (the dry run's rc 4)
failed() { [[ " ${preflight_failed[*]} " == *" $1 "* ]] || preflight_failed+=("$1"); }
dry=${DRY_RUN:-0}
has_gpu=0
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && has_gpu=1
# no compiling where the GPU gate will stop the script: the dry run, or REQUIRE_GPU=1 without a GPU
no_build=0
{ [ "$dry" = 1 ] || { [ "${REQUIRE_GPU:-0}" = 1 ] && [ $has_gpu = 0 ]; }; } && no_build=1

ARCH=${ARCH:-$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}{c[1]}')" 2>/dev/null || echo 90)}
ext_suffix=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))" 2>/dev/null)
# carried peers (tools/gpu/build_peers.sh): used when built for this architecture and this Python
peer_pack=$CARRY/peers/peers-sm$ARCH${ext_suffix%.so}.tar.xz
if [ -f "$peer_pack" ]; then
  rm -rf .gpu_cache/peers/prebuilt && mkdir -p .gpu_cache/peers/prebuilt \
    && tar xJf "$peer_pack" -C .gpu_cache/peers/prebuilt \
    && PEER_PATH=${PEER_PATH:-$PWD/.gpu_cache/peers/prebuilt}
  # imported as the benchmarks import them (vimd_kernels.bench.kernels.import_peer skips mamba_ssm's __init__)
  if PYTHONPATH="$PWD/.gpu_cache/peers/prebuilt" $PY -c "from vimd_kernels.bench.kernels import import_peer
import_peer('mamba_ssm.ops.selective_scan_interface'); import causal_conv1d" >"$OUT/peers_import.log" 2>&1; then
    note "peers: carried $peer_pack unpacked and imported ($(grep -E '^(mamba_ssm|causal_conv1d) ' .gpu_cache/peers/prebuilt/PEERS | tr '\n' ' '))"
  else
    note "peers: carried $peer_pack does not import: $(tail -1 "$OUT/peers_import.log")"
    failed peers
  fi
elif ls "$CARRY"/peers/peers-*.tar.xz >/dev/null 2>&1; then
  note "peers: carried $(cd "$CARRY"/peers && echo peers-*.tar.xz) left out: not $peer_pack (sm_$ARCH, $ext_suffix)"
  failed peers
elif [ $no_build = 1 ] && ! has peers; then
  note "peers: nothing carried (bash tools/gpu/build_peers.sh packs them into .carry/peers)"
  failed peers
fi
PEER_PATH=${PEER_PATH:-$PWD/.gpu_cache/peers/mamba_ssm-2.3.2.post1:$PWD/.gpu_cache/peers/causal_conv1d-1.7.0}
export PYTHONPATH="$PEER_PATH${PYTHONPATH:+:$PYTHONPATH}"

# Carried wheels (offline machine): .carry/wheels/*.whl (e.g. mambapy, a peer of the benchmarks)
# go into .gpu_cache/site, on PYTHONPATH, without an index or dependencies.
if ls .carry/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target .gpu_cache/site .carry/wheels/*.whl \
    && export PYTHONPATH="$PWD/.gpu_cache/site:$PYTHONPATH" \
    && note "wheels: installed $(cd .carry/wheels && echo *.whl)"
fi

# the model stages run vimd_models: its dependencies beyond the GPU image's torch must import
if has train || has model-step || has deploy; then
  if missing=$($PY -c "import importlib.util as u; print(' '.join(m for m in ('yaml', 'PIL', 'matplotlib', 'safetensors', 'tqdm', 'numpy') if u.find_spec(m) is None))" 2>&1) \
      && [ -z "$missing" ]; then
    note "model stages: yaml PIL matplotlib safetensors tqdm numpy import"
  else
    note "model stages: missing ${missing:-?} (carry their wheels in .carry/wheels)"
    failed deps
  fi
fi

peer_pid=""
if has peers; then
  if [ -x .carry/build_peers.sh ]; then
    ( ARCH=$ARCH MAX_JOBS=$MAX_JOBS PY=$PY timeout "$(left)" bash .carry/build_peers.sh \
        >"$OUT/peers_build.log" 2>&1; echo $? >"$OUT/peers_build.rc" ) &
    peer_pid=$!
    note "peers: .carry/build_peers.sh running in the background (log peers_build.log)"
  else
    note "peers: no .carry/build_peers.sh; mamba_ssm/causal_conv1d columns will say not installed"
  fi
fi

# A prebuilt extension (.carry/ours, from tools/gpu/prebuild_ext.sh on a CPU machine) replaces the
# build when it was compiled from these very sources, for this GPU and this Python: the lent
# machine's minutes then go to tests and benchmarks.
build_rc=skip
prebuilt=$CARRY/ours
if has build && [ -f "$prebuilt/module$ext_suffix.tar.xz" ] && [ "$(cat "$prebuilt/arch" 2>/dev/null)" = "$ARCH" ] \
    && [ "$(cat "$prebuilt/source.sha256" 2>/dev/null)" = "$(bash tools/gpu/prebuild_ext.sh --hash)" ]; then
  # never over a module built here (libvimd_ops.so has no Python suffix: a development tree's own
  # build would be replaced by the GPU image's); the lent machine's copy of the tree has none
  xz -dc "$prebuilt/module$ext_suffix.tar.xz" | tar xf - --skip-old-files && build_rc=0 || build_rc=1
  export PYTHONPATH="$PWD:$PYTHONPATH"
  note "build: prebuilt extension from $prebuilt (sources match, sm_$ARCH): rc=$build_rc"
  stage_log build "$([ $build_rc = 0 ] && echo ran || echo FAILED)" - "prebuilt (sm_$ARCH): rc=$build_rc"
  $PY -c "import vimd_kernels as v; from vimd_kernels import _C; print('available backends:', v.available_backends()); print('has cuda ops:', (hasattr(_C, 'selective_scan_fwd_cuda') or hasattr(__import__('torch').ops.vimd, 'selective_scan_fwd_cuda')))" 2>&1 | tee -a "$summary"
  $PY -c "from vimd_kernels import _C; assert (hasattr(_C, 'selective_scan_fwd_cuda') or hasattr(__import__('torch').ops.vimd, 'selective_scan_fwd_cuda'))" 2>/dev/null || failed build
elif has build && [ $no_build = 1 ]; then
  note "build: no prebuilt extension in $prebuilt for these sources (sm_$ARCH, $ext_suffix): the GPU machine would compile it (~82 s with 16 jobs); run tools/gpu/prebuild_ext.sh"
  failed build
elif has build && enough_time build 120; then
  bstart=$(date +%s)
  TORCH_CUDA_ARCH_LIST="${ARCH%?}.${ARCH: -1}" VIMD_CUDA_ARCHS=$ARCH MAX_JOBS=$MAX_JOBS \
    timeout "$(left)" $PY -m pip install --no-build-isolation --no-deps -v -e . >"$OUT/build.log" 2>&1
  build_rc=$?
  note "build: rc=$build_rc in $(( $(date +%s) - bstart ))s (sm_$ARCH; log build.log)"
  stage_log build "$([ $build_rc = 0 ] && echo ran || echo FAILED)" $(( $(date +%s) - bstart )) "compiled (sm_$ARCH): rc=$build_rc"
  # setup.py passes ptxas -warn-spills: one warning per spilling kernel
  spills=$(grep -c "Registers are spilled" "$OUT/build.log")
  note "build: $spills ptxas spill warning(s)"
  grep "Registers are spilled" "$OUT/build.log" | head -5 | tee -a "$summary"
  $PY -c "import vimd_kernels as v; from vimd_kernels import _C; print('available backends:', v.available_backends()); print('has cuda ops:', (hasattr(_C, 'selective_scan_fwd_cuda') or hasattr(__import__('torch').ops.vimd, 'selective_scan_fwd_cuda')))" 2>&1 | tee -a "$summary"
fi

# versions: the trees tools/gpu/pack_versions.sh left in .carry/versions/, each built in place under
# .gpu_cache/versions/ in the background (MAX_JOBS shared among them) while the tests run.
ver_pids=()
ver_labels=()  # this call's trees (a warm machine may hold others under .gpu_cache/versions/)
if has versions; then
  shopt -s nullglob
  tars=("${VERSIONS_DIR:-$CARRY/versions}"/*.tar.gz "${VERSIONS_DIR:-$CARRY/versions}"/*.tar.xz)
  shopt -u nullglob
  if [ ${#tars[@]} = 0 ]; then
    note "versions: nothing in ${VERSIONS_DIR:-$CARRY/versions} (bash tools/gpu/pack_versions.sh REV ..., then carry .carry)"
    [ $no_build = 1 ] && failed versions
  else
    mkdir -p "$OUT/versions"
    for t in "${tars[@]}"; do
      label=$(basename "$t"); label=${label%.tar.*}
      dir=.gpu_cache/versions/$label
      rm -rf "$dir" && mkdir -p "$dir" && tar xf "$t" -C "$dir"
      ver_labels+=("$label")
      if [ -f "$dir/.prebuilt" ]; then   # built by tools/gpu/prebuild_ext.sh: checked, not rebuilt
        if [ "$(cat "$dir/.prebuilt")" = "$ARCH $ext_suffix" ] \
            && (cd "$dir" && $PY -c "from vimd_kernels import _C; assert (hasattr(_C, 'selective_scan_fwd_cuda') or hasattr(__import__('torch').ops.vimd, 'selective_scan_fwd_cuda'))") \
              >"$OUT/versions/build_$label.log" 2>&1; then
          echo 0 >"$OUT/versions/build_$label.rc"; note "versions: $label prebuilt for sm_$ARCH, imports"
        else
          echo 5 >"$OUT/versions/build_$label.rc"; failed "versions:$label"
          note "versions: $label prebuilt for '$(cat "$dir/.prebuilt")', not 'sm $ARCH $ext_suffix', or its module does not import (versions/build_$label.log)"
        fi
        continue
      fi
      if [ $no_build = 1 ]; then
        note "versions: $label is source only: the GPU machine would build it (pack it with PY=... to prebuild)"
        echo 6 >"$OUT/versions/build_$label.rc"; failed "versions:$label"
        continue
      fi
      ( cd "$dir" && TORCH_CUDA_ARCH_LIST="${ARCH%?}.${ARCH: -1}" VIMD_CUDA_ARCHS=$ARCH \
          MAX_JOBS=$(( MAX_JOBS / ${#tars[@]} > 0 ? MAX_JOBS / ${#tars[@]} : 1 )) \
          timeout "$(left)" $PY setup.py build_ext --inplace >"$OUT/versions/build_$label.log" 2>&1
        echo $? >"$OUT/versions/build_$label.rc" ) &
      ver_pids+=($!)
    done
    note "versions: ${#tars[@]} packed, ${#ver_pids[@]} building in the background ($(basename -a "${tars[@]}" | tr '\n' ' '); versions/build_*.log)"
  fi
fi

# train, model-step, deploy (tools/gpu/model_check.py): what a GPU user asks first. Each runs as one
# process killed at its budget; its own steps that would not fit are skipped and say so.
MODEL_WORK=${MODEL_WORK:-$PWD/.gpu_cache/model_check}   # checkpoints and packages: not in $OUT
model_stage() {  # model_stage NAME BUDGET_S DEVICE
  local name=$1 budget=$2 dev=$3 start rc took status why="" extra=()
  has "$name" || return 0
  enough_time "$name" "$budget" || return 0
  [ "$name" = deploy ] && extra=(--train "$MODEL_WORK/train")
  rm -rf "${MODEL_WORK:?}/$name" "$OUT/$name"
  start=$(date +%s)
  timeout "$budget" $PY -m tools.gpu.model_check "$name" --device "$dev" --out "$OUT/$name" \
    --work "$MODEL_WORK/$name" --budget-s "$(( budget - 5 ))" "${extra[@]}" >"$OUT/$name.log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  status=ran; [ $rc = 0 ] || status=FAILED
  [ $rc = 124 ] && why="killed at its budget of ${budget}s; "
  note "$name ($dev): rc=$rc in ${took}s (log $name.log)"
  grep '^CHECK ' "$OUT/$name.log" | sed 's/^CHECK /  /' | tee -a "$summary"
  stage_log "$name" "$status" "$took" "${why}rc=$rc on $dev: $(grep -c '^CHECK .*: ok ' "$OUT/$name.log") ok, $(grep -c '^CHECK .*: FAILED' "$OUT/$name.log") failed, $(grep -c '^CHECK .*: skipped' "$OUT/$name.log") skipped"
}
model_stages() {  # model_stages DEVICE FACTOR: the three stages, budgets times FACTOR
  model_stage train $(( ${TRAIN_BUDGET_S:-60} * $2 )) "$1"
  model_stage model-step $(( ${MODEL_STEP_BUDGET_S:-70} * $2 )) "$1"
  model_stage deploy $(( ${DEPLOY_BUDGET_S:-45} * $2 )) "$1"
}
# the closing table: every stage that ran, failed or was skipped, and the model-level ratios
stage_table() { $PY -m tools.gpu.model_check summary "$OUT" 2>&1 | tee -a "$summary"; }

# The GPU gate: what follows needs a GPU (the cuda tests would only skip without one, the benchmarks
# refuse). DRY_RUN=1 stops here; so does REQUIRE_GPU=1 where no GPU is visible.
gpu_name() { if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>&1 | head -1; else echo "no nvidia-smi"; fi; }
gpu_steps=()
for st in test test-slow sanitize bench train model-step deploy versions test-triton profile ncu models plan tune; do has $st && gpu_steps+=("$st"); done
# the benchmark commands' job lists, from each tree's own code (--dry-run: no GPU needed)
# the kernel benchmark module of tree DIR (top-level `benchmarks` in trees from before its move into the package)
bench_module() { if [ -f "$1/benchmarks/kernels.py" ]; then echo benchmarks.kernels; else echo vimd_kernels.bench.kernels; fi; }
preset_of() { if grep -q '"gpu-bar"' "$1/$(bench_module "$1" | tr . /).py" 2>/dev/null; then echo gpu-bar; else echo gpu; fi; }
if [ "$dry" = 1 ] || [ $no_build = 1 ]; then
  if has bench; then
    # shellcheck disable=SC2086
    if n=$($PY -m vimd_kernels.bench.kernels --preset gpu --device cuda --dry-run ${BENCH_ARGS:-} 2>&1 | tail -1); then
      note "bench: job list: $n (${BENCH_ARGS:-the whole gpu preset})"
    else note "bench: the job list does not parse: $n"; failed bench; fi
  fi
  for label in "${ver_labels[@]}"; do
    dir=.gpu_cache/versions/$label
    if n=$(cd "$dir" && $PY -m "$(bench_module .)" --preset "$(preset_of .)" --device cuda --dry-run \
        --ops ${VERSIONS_OPS:-selective_scan causal_conv1d} --providers cuda 2>&1 | tail -1); then
      note "versions: $label job list: $n"
    else note "versions: $label job list does not parse: $n"; failed "versions:$label"; fi
  done
fi
if [ ${#preflight_failed[@]} -gt 0 ]; then
  note "preflight: failed: ${preflight_failed[*]}"
  stage_log preflight FAILED $(( $(date +%s) - t0 )) "${preflight_failed[*]}"
else
  stage_log preflight ran $(( $(date +%s) - t0 )) "what was carried unpacked and imported"
fi
if [ "$dry" = 1 ] || [ $no_build = 1 ]; then
  # the rehearsal: the model stages on the CPU at tiny sizes (no GPU here, so nothing else would run)
  if [ $has_gpu = 0 ] && [ "${REHEARSE:-0}" = 1 ] && { has train || has model-step || has deploy; }; then
    note "rehearsal: train model-step deploy on the cpu at tiny sizes (budgets x${REHEARSE_FACTOR:-2})"
    model_stages cpu "${REHEARSE_FACTOR:-2}"
  fi
  if [ $has_gpu = 0 ]; then
    why=$($PY -c "import torch; print('torch', torch.__version__, 'sees no CUDA device')" 2>&1 | tail -1)
    note "gpu_check: stopped after $(( $(date +%s) - t0 ))s before the steps that need a GPU (${gpu_steps[*]:-none}): $why; $(gpu_name)"
    gate_rc=3
  else
    note "gpu_check: DRY_RUN=1: stopped after $(( $(date +%s) - t0 ))s before the GPU steps (${gpu_steps[*]:-none}) on $(gpu_name)"
    gate_rc=0
  fi
  [ ${#preflight_failed[@]} -gt 0 ] && gate_rc=4
  [ -s "$OUT/stages.tsv" ] && stage_table
  for pid in "${ver_pids[@]}"; do kill "$pid" 2>/dev/null; done
  [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null
  exit $gate_rc
fi

# run_tests NAME LOG MARKS PATHS...: the tests under PATHS selected by MARKS (xdist workers when available);
# sets test_rc unless it passed before (a failure in either set fails the script).
xdist=()
$PY -c "import xdist" 2>/dev/null && [ "${TEST_WORKERS:-8}" -gt 1 ] && xdist=(-n "${TEST_WORKERS:-8}")
test_rc=skip
run_tests() {
  local name=$1 log=$2 marks=$3 rc start; shift 3
  start=$(date +%s)
  local limit=$(( $(left) - 20 ))
  [ -n "${TEST_TIMEOUT_S:-}" ] && [ "$TEST_TIMEOUT_S" -lt "$limit" ] && limit=$TEST_TIMEOUT_S
  timeout "$limit" $PY -m pytest -m "$marks" --maxfail=25 -q -rfE --durations=15 -p no:cacheprovider \
    "${xdist[@]}" --junitxml="$OUT/$log.xml" ${PYTEST_ARGS:-} "$@" >"$OUT/$log.log" 2>&1
  rc=$?
  local st=$log
  case $log in pytest_cuda) st=test ;; pytest_cuda_slow) st=test-slow ;; pytest_triton) st=test-triton ;; esac
  note "$name: rc=$rc -- $(tail -1 "$OUT/$log.log")"
  stage_log "$st" "$([ $rc = 0 ] && echo ran || echo FAILED)" $(( $(date +%s) - start )) "rc=$rc -- $(tail -1 "$OUT/$log.log" | cut -c1-150)"
  [ $rc -ne 0 ] && grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/$log.log" | head -20 | tee -a "$summary"
  if [ "$test_rc" = skip ] || [ "$test_rc" = 0 ]; then test_rc=$rc; fi
}
if has test && enough_time tests 60; then
  run_tests "tests (-m 'cuda and not slow', cuda backend)" pytest_cuda "cuda and not slow" \
    tests --ignore=tests/kernels/test_triton.py
fi
# the real-shape cases against the reference's Python loop over L (DVMSR's L = 65536: ~145 s each)
if has test-slow && enough_time "tests (slow)" 200; then
  run_tests "tests (-m 'cuda and slow')" pytest_cuda_slow "cuda and slow" tests
fi

if has sanitize && enough_time sanitize 90; then
  SAN=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
  mapfile -t cases < <($PY -c "from tests.kernels.test_cuda_racecheck import GPU_SANITIZE_CASES as c; print('\n'.join(c))")
  for tool in memcheck racecheck synccheck; do
    enough_time "sanitize ($tool)" 40 || break
    # no caching allocator under memcheck: an access past a tensor then leaves its allocation
    nocache=(); [ $tool = memcheck ] && nocache=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    "${nocache[@]}" timeout "$(( $(left) - 10 ))" "$SAN" --tool $tool --error-exitcode 9 --print-limit 20 \
      $PY -m pytest -q -p no:cacheprovider -m cuda "${cases[@]}" >"$OUT/sanitize_$tool.log" 2>&1
    note "sanitize ($tool): rc=$? -- $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|passed|failed' "$OUT/sanitize_$tool.log" | tail -2 | tr '\n' ' ')"
  done
fi

wait_peers() {  # until the peer build ends or only $1 seconds are left
  [ -n "$peer_pid" ] || return 0
  while kill -0 "$peer_pid" 2>/dev/null && [ "$(left)" -gt "$1" ]; do sleep 5; done
  if kill -0 "$peer_pid" 2>/dev/null; then
    note "peers: still building with $(left)s left; benchmarking without them (a later call resumes the build)"
  else
    note "peers: build rc=$(cat "$OUT/peers_build.rc" 2>/dev/null || echo '?'); $(tail -1 "$OUT/peers_build.log")"
  fi
  peer_pid=""
}

bench_rc=skip
if has bench; then
  wait_peers 240
  if enough_time bench 90; then
    bstart=$(date +%s)
    budget=$(( $(left) - 40 ))
    [ -n "${BENCH_BUDGET_S:-}" ] && [ "$BENCH_BUDGET_S" -lt "$budget" ] && budget=$BENCH_BUDGET_S
    timeout "$(( budget + 30 ))" $PY -m vimd_kernels.bench.kernels --preset gpu --device cuda \
      --budget-s "$budget" --out "$OUT/bench" ${BENCH_ARGS:-} >"$OUT/bench_kernels.log" 2>&1
    bench_rc=$?
    note "bench (vimd_kernels.bench.kernels --preset gpu): rc=$bench_rc (log bench_kernels.log, results bench/)"
    stage_log bench "$([ $bench_rc = 0 ] && echo ran || echo FAILED)" $(( $(date +%s) - bstart )) "rc=$bench_rc (the kernel cells; bars.txt)"
    run_csv=$OUT/bench/kernels-gpu.csv
    if [ -f "$run_csv" ]; then
      # the bars' verdicts (PASS / FAIL / NOT MEASURED)
      $PY -m tools.gpu.bars "$run_csv" >"$OUT/bars.txt" 2>&1
      note "bench: bars of this run (bars.txt, rc=$?)"
      # against the last committed run (BASELINE_CSV): what each change since then did, cell by cell
      base=${BASELINE_CSV:-benchmarks/results/nvidia-h200/kernels-gpu.csv}
      if [ -f "$base" ]; then
        $PY -m tools.gpu.compare_runs "$base" "$run_csv" >"$OUT/compare.txt" 2>&1
        note "bench: compared with $base (compare.txt, rc=$?)"
      fi
      # each cell's time against its floor (bytes over the copy bandwidth, exp2 over the SFU rate)
      $PY -m tools.gpu.floors "$run_csv" >"$OUT/floors.txt" 2>&1
      note "bench: floors of this run (floors.txt, rc=$?)"
    fi
  fi
fi

model_stages cuda 1

# versions: the same scan and conv jobs timed from each packed tree and from this one, one after the
# other; compare_runs then gives each version's time against this tree's, cell by cell.
if [ ${#ver_labels[@]} -gt 0 ]; then
  [ ${#ver_pids[@]} -gt 0 ] && wait "${ver_pids[@]}"
  # the GPU preset as DIR's own code names it (`gpu-bar` in trees before its rename): preset_of above
  vbench() {  # vbench LABEL DIR: cuda scan + conv jobs of the GPU preset, from DIR's own code
    (cd "$2" && PYTHONPATH="$PWD:${PEER_PATH}" timeout "$(( $(left) - 5 ))" $PY -m "$(bench_module .)" \
      --preset "$(preset_of .)" --device cuda --ops ${VERSIONS_OPS:-selective_scan causal_conv1d} --providers cuda \
      --budget-s "${VERSIONS_BUDGET_S:-60}" --no-plot --out "$OUT/versions/$1" >"$OUT/versions/$1.log" 2>&1)
  }
  if enough_time "versions (this tree)" "$(( ${VERSIONS_BUDGET_S:-60} + ${VERSIONS_OVERHEAD_S:-15} ))"; then
    vstart=$(date +%s)
    vbench tree "$PWD"
    rc=$?
    note "versions: this tree timed: rc=$rc (versions/tree.log)"
    stage_log "versions (this tree)" "$([ $rc = 0 ] && echo ran || echo FAILED)" $(( $(date +%s) - vstart )) "rc=$rc"
    for label in "${ver_labels[@]}"; do
      dir=.gpu_cache/versions/$label
      rc=$(cat "$OUT/versions/build_$label.rc" 2>/dev/null || echo '?')
      [ "$rc" = 0 ] || { note "versions: $label build rc=$rc (versions/build_$label.log)"; continue; }
      enough_time "versions ($label)" "$(( ${VERSIONS_BUDGET_S:-60} + ${VERSIONS_OVERHEAD_S:-15} ))" || break
      vstart=$(date +%s)
      vbench "$label" "$dir"
      rc=$?
      note "versions: $label timed: rc=$rc (versions/$label.log)"
      stage_log "versions ($label)" "$([ $rc = 0 ] && echo ran || echo FAILED)" $(( $(date +%s) - vstart )) "rc=$rc"
      old_csv=$OUT/versions/$label/kernels-$(preset_of "$dir").csv
      [ -f "$old_csv" ] && [ -f "$OUT/versions/tree/kernels-gpu.csv" ] && \
        $PY -m tools.gpu.compare_runs "$old_csv" "$OUT/versions/tree/kernels-gpu.csv" \
          >"$OUT/versions/compare_$label.txt" 2>&1
    done
  fi
fi

if has test-triton && enough_time "tests (triton)" 60; then
  run_tests "tests (-m cuda, triton backend)" pytest_triton cuda tests/kernels/test_triton.py
fi

if has profile; then
  wait_peers 150
  if enough_time profile 45; then
    timeout "$(( $(left) - 5 ))" $PY -m tools.gpu.profile_kernels --device cuda --out "$OUT/bench" \
      >"$OUT/profile.log" 2>&1
    note "profile (tools.gpu.profile_kernels): rc=$? (log profile.log: time per kernel)"
  fi
fi

# ncu: Nsight Compute's counters for our kernels and the peers' at a few bar shapes (each kernel
# once, in profile_kernels' --ncu range; --clock-control none leaves the clocks as they are).
NCU_JOBS=${NCU_JOBS:-"selective_scan:vim-ti-s16:float32:cuda selective_scan:vim-ti-s16:float32:mamba_ssm \
selective_scan:vim-ti-s8:float32:cuda selective_scan:vim-ti-s8:float32:mamba_ssm \
causal_conv1d:vim-ti-s8:float32:cuda causal_conv1d:vim-ti-s8:float32:causal_conv1d"}
if has ncu; then
  wait_peers 150
  NCU=$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)
  if [ -z "$NCU" ] || [ ! -x "$NCU" ]; then
    note "ncu: not found (PATH, /opt/nvidia/nsight-compute/*/ncu)"
  elif enough_time ncu 90; then
    timeout "$(( $(left) - 15 ))" "$NCU" --clock-control none --profile-from-start off -k "regex:scan|conv" \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis --export "$OUT/ncu" --force-overwrite \
      $PY -m tools.gpu.profile_kernels --ncu --jobs $NCU_JOBS >"$OUT/ncu.log" 2>&1
    rc=$?
    [ -f "$OUT/ncu.ncu-rep" ] && "$NCU" --import "$OUT/ncu.ncu-rep" --page details >"$OUT/ncu_details.txt" 2>&1
    note "ncu: rc=$rc, $(grep -cE ', Context [0-9]+, Stream [0-9]+' "$OUT/ncu_details.txt" 2>/dev/null) kernel launch(es) (ncu.log, ncu_details.txt)"
  fi
fi

if has plan && enough_time plan 45; then
  timeout "$(( $(left) - 5 ))" $PY -m tools.gpu.scan_plan --out "$OUT/bench" >"$OUT/scan_plan.log" 2>&1
  note "plan (tools.gpu.scan_plan): rc=$? (log scan_plan.log: the planner's splits against forced ones); $(tail -1 "$OUT/scan_plan.log")"
fi

if has tune && enough_time tune 120; then
  for op in selective_scan causal_conv1d; do
    timeout "$(( $(left) - 5 ))" $PY -m tools.gpu.tune_triton --op $op --quick --out "$OUT/bench" \
      >"$OUT/tune_$op.log" 2>&1
    note "tune ($op): rc=$? (log tune_$op.log; fastest: $(grep -m1 -E '^ *[0-9.]+ ms  ' "$OUT/tune_$op.log"))"
  done
fi

if has models; then
  wait_peers 120
  if enough_time models 60; then
    timeout "$(( $(left) - 5 ))" $PY -m vimd_models.bench --device cuda --backends cuda,triton,ref \
      --models vim_tiny_patch16_224,hrvm_net,srvm_net,dvmsr --ref-models vim_tiny_patch16_224 --out "$OUT/bench" >"$OUT/bench_models.log" 2>&1
    note "bench (vimd_models.bench): rc=$? (log bench_models.log)"
  fi
fi
wait_peers 0
[ -s "$OUT/stages.tsv" ] && stage_table >/dev/null

echo
echo "================ GPU check summary ($(( $(date +%s) - t0 ))s) ================"
head -3 "$OUT/env.txt"
cat "$summary"
[ -f "$OUT/bench_kernels.log" ] && { echo "--- kernel benchmark (tail) ---"; tail -45 "$OUT/bench_kernels.log"; }
[ -f "$OUT/profile.log" ] && { echo "--- profile (head) ---"; grep -v USDT "$OUT/profile.log" | head -40; }
[ -f "$OUT/bench_models.log" ] && { echo "--- model benchmark (tail) ---"; tail -15 "$OUT/bench_models.log"; }
[ -f "$OUT/bars.txt" ] && { echo "--- bars (bars.txt) ---"; cat "$OUT/bars.txt"; }
[ -f "$OUT/compare.txt" ] && { echo "--- cuda vs the baseline run (compare.txt) ---"; head -40 "$OUT/compare.txt"; }
[ -f "$OUT/floors.txt" ] && { echo "--- scan forward vs its floor (floors.txt) ---"; sed -n 2p "$OUT/floors.txt"; grep -E "^(op|selective_scan .* fwd )" "$OUT/floors.txt"; }
# PACK=1 (for the lent machine, which returns at most 8 files from $OUT): pack everything into one
# archive and keep only the summary, the environment, the kernel benchmark's log, its bars, its
# comparison with the baseline and its floors beside it.
[ "${PACK:-0}" = 1 ] && tar czf /tmp/gpu_check.tar.gz -C "$OUT" . && find "$OUT" -mindepth 1 -maxdepth 1 \
  ! -name summary.txt ! -name env.txt ! -name bench_kernels.log ! -name bars.txt ! -name compare.txt \
  ! -name floors.txt -exec rm -rf {} + \
  && mv /tmp/gpu_check.tar.gz "$OUT/" && echo "(everything in \$OUT/gpu_check.tar.gz)"
[ "$build_rc" = 0 ] || [ "$build_rc" = skip ] || exit 1
[ "$test_rc" = 0 ] || [ "$test_rc" = skip ] || exit 1
exit 0
