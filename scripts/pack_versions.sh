#!/usr/bin/env bash
# Packs the source trees of earlier commits into .carry/versions/<sha>.tar.gz (git-ignored), for
# benchmarks/gpu_check.sh's `versions` stage: on the lent GPU machine (which has no git history) it
# builds each beside the working tree and times their kernels in the same call, so every change is
# measured against the version before it, not against a run on another day.
#
#   bash scripts/pack_versions.sh 2d35d04 b6e2c54 6db1b1f     # then carry .carry
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: bash scripts/pack_versions.sh REV [REV ...]" >&2; exit 2; }
mkdir -p .carry/versions
for rev in "$@"; do
  sha=$(git rev-parse --verify --quiet --short "$rev^{commit}") \
    || { echo "pack_versions: no commit named '$rev'" >&2; exit 2; }
  git archive --format=tar.gz -o ".carry/versions/$sha.tar.gz" "$sha"
  echo "$sha $(git log -1 --format=%s "$sha" | cut -c1-100)"
done
du -sh .carry/versions
