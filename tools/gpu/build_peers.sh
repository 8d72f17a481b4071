#!/usr/bin/env bash
# Builds the peers that the GPU benchmarks time beside our kernels, mamba_ssm (selective_scan_cuda)
# and causal_conv1d (causal_conv1d_cuda), from their released source archives, on a machine with a
# package index, for the lent GPU machine's stack (Python 3.12, torch 2.11.0+cu130, one
# architecture), and packs them into .carry/peers/ for tools/gpu/gpu_check.sh. Their code is never
# committed: it is downloaded into .gpu_cache/peers/ (git-ignored) and packed into .carry/ (ignored).
#
#   bash tools/gpu/build_peers.sh                      # every step: venv download patch build pack
#   bash tools/gpu/build_peers.sh patch build pack     # some steps (each needs the ones before it)
#   bash tools/gpu/build_peers.sh --check              # the steps and settings, nothing run
#
# Pinned releases: the ones the committed H200 run timed (benchmarks/results/nvidia-h200/README.md:
# mamba_ssm 2.3.2.post1, causal_conv1d 1.7.0). The patch step leaves their kernels as released and
# changes only what is compiled:
#   - one -gencode pair (sm_$ARCH) instead of their ~9 architectures;
#   - float32 and bfloat16 inputs/weights only: the float16 instantiations are dropped (mamba_ssm's
#     three *_fp16*.cu files; causal_conv1d's `template void ...<at::Half...>` lines) and the
#     float16 branch of each dispatch macro of their bindings raises "not implemented" instead;
#   - no -lineinfo and no `--ptxas-options=-v` (neither changes the machine code; -lineinfo only
#     adds a line table to the device code, which we do not carry).
# Every patch is checked: a source that no longer matches the expected text stops the script.
#
# Env: PY (the build's Python with the GPU image's torch; default .gpu_cache/py312/bin/python, made by
#      the venv step from PYTHON312), PYTHON312 (a Python 3.12; default: python3.12 on PATH or
#      pyenv's), TORCH_SPEC (default torch==2.11.0), ARCH (default 90), MAX_JOBS (default 2, split
#      between the two builds), NICE (default 19), MAMBA_VERSION, CONV_VERSION, CUDA_HOME.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CACHE=$ROOT/.gpu_cache/peers
DEST=$ROOT/.carry/peers
VENV=$ROOT/.gpu_cache/py312
PY=${PY:-$VENV/bin/python}
TORCH_SPEC=${TORCH_SPEC:-torch==2.11.0}
ARCH=${ARCH:-90}
MAX_JOBS=${MAX_JOBS:-2}
NICE=${NICE:-19}
MAMBA_VERSION=${MAMBA_VERSION:-2.3.2.post1}
CONV_VERSION=${CONV_VERSION:-1.7.0}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
MAMBA=mamba_ssm-$MAMBA_VERSION
CONV=causal_conv1d-$CONV_VERSION
ALL_STEPS="venv download patch build pack"
MIN_FREE_GB=8   # the venv (torch + its CUDA libraries) takes 4.7 GB, the builds ~1 GB

die() { echo "build_peers: $*" >&2; exit 2; }
stamp() { echo "build_peers: $1 in $(( $(date +%s) - $2 ))s"; }

if [ "${1:-}" = --check ]; then
  echo "steps: $ALL_STEPS"
  echo "peers: $MAMBA $CONV; sm_$ARCH; float32 and bfloat16"
  echo "python: $PY; torch: $TORCH_SPEC; MAX_JOBS=$MAX_JOBS; nice $NICE"
  echo "sources: $CACHE; packed: $DEST"
  exit 0
fi
steps=("$@")
[ ${#steps[@]} -gt 0 ] || read -r -a steps <<<"$ALL_STEPS"
for s in "${steps[@]}"; do
  [[ " $ALL_STEPS " == *" $s "* ]] || die "unknown step '$s' (steps: $ALL_STEPS)"
done
has() { [[ " ${steps[*]} " == *" $1 "* ]]; }
mkdir -p "$CACHE"

if has venv; then
  t=$(date +%s)
  if [ ! -x "$PY" ]; then
    [ "$PY" = "$VENV/bin/python" ] || die "venv: no Python at PY=$PY (unset PY to make $VENV)"
    free_gb=$(df -Pk "$ROOT" | awk 'NR == 2 {print int($4 / 1048576)}')
    [ "$free_gb" -ge "$MIN_FREE_GB" ] || die "venv: only ${free_gb} GB free under $ROOT (needs ~$MIN_FREE_GB GB)"
    py312=${PYTHON312:-}
    for c in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do   # the first that runs
      [ -z "$py312" ] && "$c" -V >/dev/null 2>&1 && py312=$c
    done
    [ -n "$py312" ] || die "venv: no Python 3.12 (set PYTHON312)"
    "$py312" -m venv "$VENV"
  fi
  # what the builds need, and einops (the GPU image has it) for the dry run's import of mamba_ssm
  nice -n "$NICE" "$PY" -m pip install -q "$TORCH_SPEC" numpy ninja wheel packaging einops 'setuptools<82'
  "$PY" -c "import torch, sys; print('build_peers: venv: python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  stamp venv "$t"
fi

if has download; then
  t=$(date +%s)
  mkdir -p "$CACHE/sdist"
  # their setup.py files import torch even to state their metadata; the SKIP variables leave out
  # the compilation that pip would otherwise start
  MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE "$PY" -m pip download -q --no-deps \
    --no-build-isolation --no-binary :all: -d "$CACHE/sdist" "mamba-ssm==$MAMBA_VERSION" "causal-conv1d==$CONV_VERSION"
  ls -l "$CACHE/sdist"
  stamp download "$t"
fi

if has patch; then
  t=$(date +%s)
  for p in $MAMBA $CONV; do
    [ -f "$CACHE/sdist/$p.tar.gz" ] || die "patch: no $CACHE/sdist/$p.tar.gz (run the download step)"
    rm -rf "${CACHE:?}/src/$p" && mkdir -p "$CACHE/src" && tar xzf "$CACHE/sdist/$p.tar.gz" -C "$CACHE/src"
  done
  ARCH=$ARCH "$PY" - "$CACHE/src/$MAMBA" "$CACHE/src/$CONV" <<'EOF'
import os, re, sys
mamba, conv = sys.argv[1:3]
arch = os.environ["ARCH"]

def edit(path, subs):
    """subs: (pattern, replacement, expected count); any mismatch stops the build."""
    with open(path) as f:
        text = f.read()
    for pattern, repl, want in subs:
        text, n = re.subn(pattern, repl, text, flags=re.M | re.S)
        if n != want:
            sys.exit(f"build_peers: patch: {path}: {pattern!r} matched {n} times, expected {want}")
    with open(path, "w") as f:
        f.write(text)

# setup.py: one architecture (their list of -gencode appends becomes one pair), no line table,
# no ptxas report; mamba_ssm: its float16 translation units out of the sources.
gencode = (r'^(    # HACK: The compiler flag)',
           '    cc_flag = ["-gencode", "arch=compute_%s,code=sm_%s"]  # build_peers.sh: one architecture\n\\1'
           % (arch, arch))
for root, fp16 in ((mamba, 3), (conv, 0)):
    edit(os.path.join(root, "setup.py"), [
        gencode + (1,),
        (r'^\s*"--ptxas-options=-v",\n', "", 1),
        (r'^\s*"-lineinfo",\n', "", 1),
        (r'^\s*"csrc/selective_scan/selective_scan_[a-z]+_fp16[a-z_]*\.cu",\n', "", fp16),
    ])
# the bindings: float16 inputs/weights raise "not implemented" (nothing is compiled for them)
half_branch = (r'if \((ITYPE|WTYPE) == at::ScalarType::Half\) \{[^}]*?\} else if', r'if')
edit(os.path.join(mamba, "csrc/selective_scan/selective_scan.cpp"), [half_branch + (2,)])
edit(os.path.join(conv, "csrc/causal_conv1d.cpp"), [half_branch + (2,)])
# causal_conv1d: every explicit instantiation that names at::Half
for name, n in (("causal_conv1d_fwd.cu", 10), ("causal_conv1d_bwd.cu", 10), ("causal_conv1d_update.cu", 5)):
    edit(os.path.join(conv, "csrc", name), [(r'^template void [^\n]*at::Half[^\n]*\n', "", n)])
print(f"build_peers: patched {os.path.basename(mamba)} and {os.path.basename(conv)}: sm_{arch}, float32/bfloat16")
EOF
  stamp patch "$t"
fi

if has build; then
  t=$(date +%s)
  for p in $MAMBA $CONV; do [ -f "$CACHE/src/$p/setup.py" ] || die "build: no $CACHE/src/$p (run the patch step)"; done
  command -v "$CUDA_HOME/bin/nvcc" >/dev/null || die "build: no nvcc under CUDA_HOME=$CUDA_HOME"
  jobs=$(( MAX_JOBS / 2 > 0 ? MAX_JOBS / 2 : 1 ))
  pids=()
  for p in $MAMBA $CONV; do
    ( cd "$CACHE/src/$p" && s=$(date +%s) \
      && MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=$jobs TORCH_CUDA_ARCH_LIST="${ARCH%?}.${ARCH: -1}" \
         nice -n "$NICE" "$PY" setup.py build_ext --inplace >"$CACHE/build_$p.log" 2>&1 \
      && echo "build_peers: built $p in $(( $(date +%s) - s ))s" ) &
    pids+=($!)
  done
  rc=0
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  [ $rc = 0 ] || { tail -20 "$CACHE"/build_*.log >&2; die "build failed (logs $CACHE/build_*.log)"; }
  stamp "build (MAX_JOBS=$MAX_JOBS)" "$t"
fi

if has pack; then
  t=$(date +%s)
  suffix=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
  stage=$CACHE/pack
  rm -rf "$stage" && mkdir -p "$stage" "$DEST"
  for p in $MAMBA $CONV; do
    so=$(ls "$CACHE/src/$p"/*"$suffix" 2>/dev/null | head -1 || true)
    [ -n "$so" ] || die "pack: no built extension in $CACHE/src/$p (run the build step)"
    echo "build_peers: $(basename "$so"): $(stat -c %s "$so") bytes as built"
    strip --strip-debug -o "$stage/$(basename "$so")" "$so"
    echo "build_peers: $(basename "$so"): $(stat -c %s "$stage/$(basename "$so")") bytes stripped of host debug info"
    pkg=${p%-*}
    (cd "$CACHE/src/$p" && tar cf - --exclude=__pycache__ "$pkg") | tar xf - -C "$stage"
  done
  {
    echo "mamba_ssm $MAMBA_VERSION"
    echo "causal_conv1d $CONV_VERSION"
    echo "arch $ARCH"
    echo "ext_suffix $suffix"
    echo "torch $("$PY" -c 'import torch; print(torch.__version__)')"
    echo "dtypes float32 bfloat16"
    echo "built $(date -u +%FT%TZ) by tools/gpu/build_peers.sh"
  } >"$stage/PEERS"
  rm -f "$DEST"/peers-*.tar.xz
  out=$DEST/peers-sm$ARCH${suffix%.so}.tar.xz
  tar cf - -C "$stage" . | xz -9 -T"$MAX_JOBS" >"$out"
  cp "$stage/PEERS" "$DEST/PEERS"
  echo "build_peers: packed $out: $(stat -c %s "$out") bytes"
  stamp pack "$t"
fi
