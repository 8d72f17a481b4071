#!/usr/bin/env bash
# Packaging check: build the sdist, build the wheel FROM the sdist (so a file missing from the
# sdist fails the build), install the wheel into a fresh venv outside the repository and use it
# from a folder outside the repository: the CLI, a short training run with a packaged config
# named without a path, the compiled CPU kernel against the reference, and short kernel
# benchmarks (their CSV, and their PNG where matplotlib imports).
#
# CPU-only and offline: VIMD_SKIP_CUDA_BUILD=TRUE, and --no-isolation so the build uses the
# project venv's torch (an isolated build would fetch a torch of its own). The fresh venv gets no
# packages of its own: a .pth file makes the project venv's site-packages (torch, numpy, ...)
# importable after its own, so the installed wheel, not the checkout, is what gets imported.
#
#   bash scripts/check_package.sh [PYTHON]     (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${1:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d /tmp/vimd-package.XXXXXX)
export WORK
trap 'rm -rf "$WORK"' EXIT

echo "== build sdist, then the wheel from the sdist (CPU kernels only)"
VIMD_SKIP_CUDA_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-2} \
  "$PY" -m build --no-isolation --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log"; exit 1; }
ls -l "$WORK/dist"

echo "== what the sdist and the wheel hold"
VIMD_SDIST=$(ls "$WORK"/dist/vimd-*.tar.gz) VIMD_WHEEL=$(ls "$WORK"/dist/vimd-*.whl) \
  "$PY" -m pytest -q -p no:cacheprovider tests/packaging

echo "== install the wheel into a fresh venv"
"$PY" -m venv --without-pip "$WORK/venv"
VPY=$WORK/venv/bin/python
"$PY" -c "import sys; print('\n'.join(p for p in sys.path if p.endswith('site-packages')))" \
  > "$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_vimd_deps.pth"
"$PY" -m pip --disable-pip-version-check --python "$VPY" install -q --no-deps --no-index "$WORK"/dist/vimd-*.whl

echo "== use it from outside the repository"
mkdir "$WORK/use"
cd "$WORK/use"
export PATH=$WORK/venv/bin:$PATH
"$VPY" - <<'EOF'
import os
import vimd_kernels
import vimd_models
for mod in (vimd_kernels, vimd_models):
    assert os.path.dirname(mod.__file__).startswith(os.environ["WORK"]), mod.__file__
print("imported from", os.path.dirname(vimd_models.__file__))
EOF
vimd demo --help > /dev/null
vimd models > models.txt
grep -qx vim_tiny_patch16_224 models.txt
vimd train demo_teacher backend=cpu output_dir=runs name=smoke train.epochs=1 data.train_size=32 \
  data.val_size=16 data.batch_size=16 data.eval_batch_size=16
test -f runs/smoke/model.safetensors
"$VPY" - <<'EOF'
import torch
from vimd_kernels import selective_scan_fn, selective_scan_ref
torch.manual_seed(0)
b, d, n, L = 2, 8, 4, 33
u, delta, z = torch.randn(b, d, L), torch.rand(b, d, L), torch.randn(b, d, L)
A, B, C, D = -torch.rand(d, n), torch.randn(b, n, L), torch.randn(b, n, L), torch.randn(d)
args = (u, delta, A, B, C, D, z, torch.rand(d))
out = selective_scan_fn(*args, delta_softplus=True, backend="cpu")
ref = selective_scan_ref(*args, delta_softplus=True)
torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
print("cpu kernel == reference: max abs diff", (out - ref).abs().max().item())
EOF
plot=$("$VPY" -c "import matplotlib" 2>/dev/null && echo png || true)
vimd bench kernels --preset cpu --quick --batch 1 --out "$WORK/bench" > bench.log
sed -n '/^# cpu backend/,$p' bench.log
for ext in csv json $plot; do test -s "$WORK/bench/kernels-cpu-quick.$ext"; done
grep -q "^# skipped providers" bench.log
vimd bench kernels --quick --ops causal_conv1d --modes fwd --providers cpu > /dev/null   # no --out: ./vimd-bench/<device>
for ext in csv json $plot; do test -s vimd-bench/*/kernels-quick.$ext; done
echo "package check passed"
