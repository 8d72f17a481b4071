# The README's two commands: `make demo` (set up + main job) and `make test` (set up + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: setup test test-cpu test-interpret test-cuda racecheck demo bench check-gpu-code clean

setup: $(VENV)/.installed

# The venv sees the system site-packages, so a torch already on the machine (e.g. a CUDA build) is
# reused and the kernels are built against it; torch==2.13.0 is installed only when none imports.
# The build requirements are pyproject.toml's own list, installed over whatever the venv bundles.
$(VENV)/.installed: pyproject.toml setup.py scripts/build_requires.py $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*)
	test -x $(PY) || python3 -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q $$($(PY) scripts/build_requires.py)
	$(PIP) install -q --no-build-isolation -e ".[dev]"
	touch $@

test: setup test-cpu test-interpret

test-cpu:
	$(PY) -m pytest -q -m "not cuda and not slow and not interpret" tests

test-interpret:
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "interpret and not slow" tests

test-cuda: setup
	$(PY) -m pytest -q -m cuda tests

# Every CUDA-emulator test under ThreadSanitizer (CI runs one case per kernel; this takes about two hours on 2 cores).
racecheck: setup
	$(PY) -m pytest -q -m slow tests/kernels/test_cuda_racecheck.py

demo: setup
	$(VENV)/bin/vimd demo

bench: setup
	$(PY) -m vimd_kernels.bench.kernels --out 'benchmarks/results/{device}'

# Compile-only checks of the GPU code, no GPU needed: every CUDA kernel with nvcc (spills fail),
# the CUDA binding layer against torch's headers, every Triton kernel ahead of time.
check-gpu-code: setup
	bash scripts/check_cuda_compile.sh
	bash scripts/check_cuda_bindings.sh
	$(PY) scripts/check_triton_compile.py --arch 80 90 --allow-occupancy-spills

clean:
	rm -rf build *.egg-info vimd_kernels/_C*.so
