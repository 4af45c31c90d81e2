"""pytest-benchmark suites for one_fast: ``pytest benchmarks/ --benchmark-only``.

See BENCHMARKS.md for what each figure means; ``benchmarks/gpu_check.sh`` runs everything on a
GPU machine and writes the results under ``benchmarks/results/``.
"""
