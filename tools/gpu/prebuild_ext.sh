#!/usr/bin/env bash
# Builds the extension (CPU + CUDA kernels) for one GPU architecture and one Python on this
# machine, from the committed tree of HEAD, into .carry/ours/ (git-ignored): the compressed module,
# the architecture, and a hash of the sources it was built from. tools/gpu/gpu_check.sh uses it
# instead of building when the hash still matches, saving the lent GPU machine's minutes. Needs nvcc
# and a Python whose torch matches the GPU machine's (tools/gpu/build_peers.sh venv makes one:
# .gpu_cache/py312, Python 3.12 with torch 2.11.0+cu130).
#
#   PY=.gpu_cache/py312/bin/python ARCH=90 bash tools/gpu/prebuild_ext.sh
#   bash tools/gpu/prebuild_ext.sh --hash     # prints the sources' hash only
# With VERSION_TAR=FILE and REV=COMMIT (tools/gpu/pack_versions.sh sets them), COMMIT's whole tree
# is built and written to FILE (tar.xz) with its module in place and a `.prebuilt` marker (the
# architecture and Python extension suffix): gpu_check.sh's versions stage then skips its build.
set -euo pipefail
cd "$(dirname "$0")/../.."
src_hash() {
  LC_ALL=C find csrc setup.py -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.cpp' \
    -o -name '*.py' \) -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}
if [ "${1:-}" = --hash ]; then src_hash; exit 0; fi
PY=${PY:?set PY to the GPU machine Python (with its torch)}
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac   # the build runs elsewhere
ARCH=${ARCH:-90}
REV=${REV:-HEAD}
sha=$(git rev-parse --verify --quiet "$REV^{commit}") || { echo "prebuild_ext: no commit named '$REV'" >&2; exit 2; }
if [ -z "${VERSION_TAR:-}" ]; then
  git diff --quiet HEAD -- csrc setup.py || { echo "prebuild_ext: commit csrc/ and setup.py first (HEAD's committed tree is built)" >&2; exit 2; }
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"
git archive "$sha" | tar xf - -C "$tmp/src"
# modules already built here are kept by source hash, architecture and Python (.gpu_cache/prebuilt):
# the same kernel sources (HEAD and a packed version, or a tree whose change touched no kernel) build once
suffix=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
cached=.gpu_cache/prebuilt/$(cd "$tmp/src" && src_hash)-sm$ARCH$suffix
# the built module: vimd_kernels/_C (and, from the commit that moved the ops out of it, the ops
# library vimd_kernels/libvimd_ops.so); cached as one file (older trees) or a folder of both
module_files() { for f in "vimd_kernels/_C$suffix" vimd_kernels/libvimd_ops.so; do [ -f "$1/$f" ] && echo "$f"; done; }
if [ -d "$cached.d" ] || [ -f "$cached" ]; then
  if [ -d "$cached.d" ]; then cp "$cached.d"/* "$tmp/src/vimd_kernels/"; else cp "$cached" "$tmp/src/vimd_kernels/_C$suffix"; fi
  echo "prebuild_ext: ${sha:0:7}: the module of the same sources is in $cached (not rebuilt)"
  : >"$tmp/build.log"
else
  start=$(date +%s)
  (cd "$tmp/src" && CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST="${ARCH%?}.${ARCH: -1}" \
    VIMD_CUDA_ARCHS=$ARCH MAX_JOBS=${MAX_JOBS:-2} nice -n "${NICE:-19}" "$PY" setup.py build_ext --inplace \
    >"$tmp/build.log" 2>&1) || { tail -30 "$tmp/build.log" >&2; exit 1; }
  echo "prebuild_ext: built ${sha:0:7} for sm_$ARCH in $(( $(date +%s) - start ))s"
  [ -f "$tmp/src/vimd_kernels/_C$suffix" ] || { echo "prebuild_ext: no vimd_kernels/_C$suffix was built" >&2; exit 1; }
  mkdir -p "$cached.d"
  for f in $(module_files "$tmp/src"); do cp "$tmp/src/$f" "$cached.d/"; done
fi
echo "ptxas spill warnings: $(grep -c "Registers are spilled" "$tmp/build.log" || true)"
if [ -n "${VERSION_TAR:-}" ]; then
  for f in $(module_files "$tmp/src"); do strip --strip-debug "$tmp/src/$f"; done
  echo "$ARCH $suffix" >"$tmp/src/.prebuilt"
  rm -rf "$tmp/src/build"
  mkdir -p "$(dirname "$VERSION_TAR")"
  tar cf - -C "$tmp/src" . | xz -T"${MAX_JOBS:-2}" >"$VERSION_TAR"
  echo "prebuild_ext: $VERSION_TAR: $(stat -c %s "$VERSION_TAR") bytes (module $(stat -c %s "$tmp/src/vimd_kernels/_C$suffix") bytes stripped)"
  exit 0
fi
mkdir -p .carry/ours
rm -f .carry/ours/_C*.xz .carry/ours/module*.tar.xz
for f in $(module_files "$tmp/src"); do strip --strip-debug "$tmp/src/$f"; done
tar cf - -C "$tmp/src" $(module_files "$tmp/src") | xz -T0 >".carry/ours/module$suffix.tar.xz"
echo "$ARCH" >.carry/ours/arch
(cd "$tmp/src" && bash tools/gpu/prebuild_ext.sh --hash) >.carry/ours/source.sha256
echo "${sha:0:7}" >.carry/ours/commit
ls -l .carry/ours
