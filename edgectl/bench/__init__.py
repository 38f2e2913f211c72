"""Benchmarks of the kernels against their baselines, run by `edgectl bench`."""
