#!/usr/bin/env bash
# Packs earlier commits' source trees into .carry/versions/ (git-ignored) for
# tools/gpu/gpu_check.sh's `versions` stage: on the lent GPU machine (which has no git history) it
# times their kernels beside the working tree's in the same call, so a change is measured against
# the version before it, not against a run on another day.
#
#   bash tools/gpu/pack_versions.sh 2d35d04 b6e2c54    # <sha>.tar.gz: built on the GPU machine
#   PY=.gpu_cache/py312/bin/python ARCH=90 bash tools/gpu/pack_versions.sh 2d35d04
#       # <sha>.tar.xz with the extension built here (tools/gpu/prebuild_ext.sh): no build there
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -gt 0 ] || { echo "usage: [PY=... ARCH=...] bash tools/gpu/pack_versions.sh REV ..." >&2; exit 2; }
mkdir -p .carry/versions
for arg in "$@"; do
  sha=$(git rev-parse --verify --quiet --short "$arg^{commit}") \
    || { echo "pack_versions: no commit named '$arg'" >&2; exit 2; }
  rm -f ".carry/versions/$sha".tar.*
  if [ -n "${PY:-}" ]; then
    REV=$sha VERSION_TAR=".carry/versions/$sha.tar.xz" bash tools/gpu/prebuild_ext.sh
  else
    git archive --format=tar.gz -o ".carry/versions/$sha.tar.gz" "$sha"
  fi
  echo "$sha $(git log -1 --format=%s "$sha" | cut -c1-100)"
done
du -sh .carry/versions
