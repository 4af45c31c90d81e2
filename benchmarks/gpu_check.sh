#!/usr/bin/env bash
# One-shot GPU check of one_fast inside one 600-second device call on one H100/H200: stages in
# the order of what decides most (preflight, native build, precision tests, one CIFAR-shaped
# ResNet-32 epoch per mode, loss and step benchmarks, remaining GPU tests), each under a cap,
# all within GPU_CHECK_SECONDS (default 540), results written as they happen as JSON under one
# folder. benchmarks/gpu_check.py documents the stages and files.
#
#   benchmarks/gpu_check.sh [--dry-run] [--no-install] [--out DIR]
#
# --dry-run prints the plan with each stage's cap (no GPU needed). Environment: PYTHON
# (default python3), GPU_CHECK_SECONDS, ONE_FAST_COMMIT (recorded commit, where the copy has no
# .git), ONE_FAST_BENCH_SECONDS (timing budget per benchmark case; default 0.5).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
