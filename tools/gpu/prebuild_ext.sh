#!/usr/bin/env bash
# Builds the extension (CPU + CUDA kernels) for one GPU architecture and one Python on this
# machine, from a clean clone of HEAD, into .carry/ours/ (git-ignored): the compressed module, the
# architecture, and a hash of the sources it was built from. tools/gpu/gpu_check.sh uses it instead
# of building when the hash still matches, saving the lent GPU machine's minutes. Needs nvcc and a
# Python whose torch matches the GPU machine's (e.g. PY=/tmp/v312/bin/python with torch+cu130).
#
#   PY=/tmp/v312/bin/python ARCH=90 bash tools/gpu/prebuild_ext.sh
#   bash tools/gpu/prebuild_ext.sh --hash     # prints the sources' hash only
set -euo pipefail
cd "$(dirname "$0")/../.."
src_hash() {
  LC_ALL=C find csrc setup.py -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.cpp' \
    -o -name '*.py' \) -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}
if [ "${1:-}" = --hash ]; then src_hash; exit 0; fi
PY=${PY:?set PY to the GPU machine Python (with its torch)}
ARCH=${ARCH:-90}
git diff --quiet HEAD -- csrc setup.py || { echo "prebuild_ext: commit csrc/ and setup.py first (a clean clone of HEAD is built)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git clone -q . "$tmp/src"
(cd "$tmp/src" && CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST="${ARCH%?}.${ARCH: -1}" \
  VIMD_CUDA_ARCHS=$ARCH MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py build_ext --inplace >"$tmp/build.log" 2>&1) \
  || { tail -30 "$tmp/build.log" >&2; exit 1; }
suffix=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
mkdir -p .carry/ours
rm -f .carry/ours/_C*.xz
strip --strip-debug -o "$tmp/_C$suffix" "$tmp/src/vimd_kernels/_C$suffix"
xz -T0 -c "$tmp/_C$suffix" >".carry/ours/_C$suffix.xz"
echo "$ARCH" >.carry/ours/arch
(cd "$tmp/src" && bash tools/gpu/prebuild_ext.sh --hash) >.carry/ours/source.sha256
echo "ptxas spill warnings: $(grep -c "Registers are spilled" "$tmp/build.log" || true)"
ls -l .carry/ours
