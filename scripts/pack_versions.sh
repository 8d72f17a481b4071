#!/usr/bin/env bash
# Packs source trees into .carry/versions/<label>.tar.gz (git-ignored) for benchmarks/gpu_check.sh's
# `versions` stage: on the lent GPU machine (which has no git history) it builds each beside the
# working tree and times their kernels in the same call, so a change is measured against the
# version before it, not against a run on another day. Each argument is
#   REV          an earlier commit (label: its short sha), or
#   ablate:MASK  HEAD built with VIMD_ABLATE=MASK (csrc/cuda/params.h: stages of the scan kernels
#                left out, to place their time; label: ablate<MASK>).
#
#   bash scripts/pack_versions.sh 2d35d04 b6e2c54 ablate:1 ablate:2    # then carry .carry
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: bash scripts/pack_versions.sh REV|ablate:MASK ..." >&2; exit 2; }
mkdir -p .carry/versions
for arg in "$@"; do
  if [[ $arg == ablate:* ]]; then
    mask=${arg#ablate:}
    [[ $mask =~ ^[0-9]+$ ]] && [ "$mask" -gt 0 ] && [ "$mask" -lt 64 ] \
      || { echo "pack_versions: ablate:MASK takes a mask of 1..63 (csrc/cuda/params.h), got '$mask'" >&2; exit 2; }
    tmp=$(mktemp -d)
    git archive HEAD | tar x -C "$tmp"
    sed -i "s/^#define VIMD_ABLATE 0\$/#define VIMD_ABLATE $mask/" "$tmp/csrc/cuda/params.h"
    grep -q "^#define VIMD_ABLATE $mask\$" "$tmp/csrc/cuda/params.h" \
      || { rm -rf "$tmp"; echo "pack_versions: no '#define VIMD_ABLATE 0' line in HEAD's csrc/cuda/params.h" >&2; exit 2; }
    tar czf ".carry/versions/ablate$mask.tar.gz" -C "$tmp" .
    rm -rf "$tmp"
    echo "ablate$mask HEAD ($(git rev-parse --short HEAD)) with VIMD_ABLATE=$mask"
  else
    sha=$(git rev-parse --verify --quiet --short "$arg^{commit}") \
      || { echo "pack_versions: no commit named '$arg'" >&2; exit 2; }
    git archive --format=tar.gz -o ".carry/versions/$sha.tar.gz" "$sha"
    echo "$sha $(git log -1 --format=%s "$sha" | cut -c1-100)"
  fi
done
du -sh .carry/versions
