#!/usr/bin/env bash
# Packs earlier commits' source trees into .carry/versions/<short sha>.tar.gz (git-ignored) for
# tools/gpu/gpu_check.sh's `versions` stage: on the lent GPU machine (which has no git history) it
# builds each beside the working tree and times their kernels in the same call, so a change is
# measured against the version before it, not against a run on another day.
#
#   bash tools/gpu/pack_versions.sh 2d35d04 b6e2c54    # then carry .carry
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -gt 0 ] || { echo "usage: bash tools/gpu/pack_versions.sh REV ..." >&2; exit 2; }
mkdir -p .carry/versions
for arg in "$@"; do
  sha=$(git rev-parse --verify --quiet --short "$arg^{commit}") \
    || { echo "pack_versions: no commit named '$arg'" >&2; exit 2; }
  git archive --format=tar.gz -o ".carry/versions/$sha.tar.gz" "$sha"
  echo "$sha $(git log -1 --format=%s "$sha" | cut -c1-100)"
done
du -sh .carry/versions
