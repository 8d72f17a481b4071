"""Kernel and model benchmarks (scripts: python -m benchmarks.kernels)."""
