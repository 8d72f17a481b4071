#!/usr/bin/env bash
# Host-compile check of the CUDA binding layer (no GPU, no CUDA build of torch): compiles
# csrc/cuda/ops.cpp and csrc/bindings.cpp with VIMD_WITH_CUDA, i.e. the real-device branches
# (device guards, current stream, cudaFuncSetAttribute) that the host emulator's build of the same
# file leaves out, against the installed torch's headers and the CUDA toolkit's.
# A CPU wheel of torch ships c10/cuda and ATen/cuda headers but not the generated
# c10/cuda/impl/cuda_cmake_macros.h: a one-line stand-in is put on the include path.
# Env: PY (python with torch; default .venv/bin/python), CXX, CUDA_HOME.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
CXX=${CXX:-g++}
if [ -z "${CUDA_HOME:-}" ]; then
  nvcc_bin=$(command -v nvcc || true)
  [ -n "$nvcc_bin" ] || { echo "check_cuda_bindings: nvcc not found (set CUDA_HOME)" >&2; exit 2; }
  # nvcc may be a wrapper script: ask it where its headers are.
  CUDA_HOME=$(nvcc -v -x cu -E /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
  [ -n "$CUDA_HOME" ] || CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$nvcc_bin")")")
fi
[ -f "$CUDA_HOME/include/cuda_runtime_api.h" ] || {
  echo "check_cuda_bindings: no CUDA headers under $CUDA_HOME/include" >&2; exit 2; }

# STD: the C++ standard torch.utils.cpp_extension compiles extensions as, for this torch.
read -r TORCH_INC PY_INC PYBIND_INC STD < <("$PY" - <<'EOF'
import inspect, os, re, sysconfig, torch, pybind11
import torch.utils.cpp_extension as ce
std = re.search(r"'-std=(c\+\+\d+)'", inspect.getsource(ce))
print(os.path.join(os.path.dirname(torch.__file__), "include"), sysconfig.get_paths()["include"],
      pybind11.get_include(), std.group(1) if std else "c++17")
EOF
)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ ! -f "$TORCH_INC/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  mkdir -p "$tmp/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$tmp/c10/cuda/impl/cuda_cmake_macros.h"
fi

status=0
for f in csrc/cuda/ops.cpp csrc/bindings.cpp; do
  if "$CXX" -std="$STD" -fsyntax-only -Wall -Werror -Wno-c++20-extensions -DVIMD_WITH_CUDA \
      -DTORCH_EXTENSION_NAME=_C -I"$tmp" -isystem "$TORCH_INC" -isystem "$TORCH_INC/torch/csrc/api/include" \
      -isystem "$CUDA_HOME/include" -isystem "$PY_INC" -isystem "$PYBIND_INC" -Icsrc "$f"; then
    echo "ok   $f"
  else
    echo "FAIL $f"; status=1
  fi
done
[ $status -eq 0 ] && echo "check_cuda_bindings: OK" || echo "check_cuda_bindings: FAILED"
exit $status
