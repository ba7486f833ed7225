"""Benchmarks: CPU-size pytest-benchmark suites and the GPU script. Results go to bench/results/."""
