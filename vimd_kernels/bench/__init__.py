"""Kernel benchmarks: ``python -m vimd_kernels.bench.kernels`` (or ``vimd bench kernels``) times the
kernels against the reference and the upstream packages; ``python -m vimd_kernels.bench.mixer_memory``
measures the mixers' peak memory; ``python -m vimd_kernels.bench.load`` the slowdown of a kernel
while other processes load the cores."""
