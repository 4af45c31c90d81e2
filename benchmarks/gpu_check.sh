#!/usr/bin/env bash
# One-shot GPU validation and benchmark run for one_fast, inside one 600-second device call on
# one H100/H200 (GPU_CHECK_SECONDS = 540 by default, leaving a minute for start-up and copies).
#
#   benchmarks/gpu_check.sh [--dry-run] [--no-install] [--out DIR]
#
# Needs only python3 with torch, triton, numpy, tqdm, scikit-learn, matplotlib, pytest,
# pytest-benchmark, hypothesis (and nvidia-ml-py for NVML telemetry) plus the NVIDIA tools; no
# internet. Stages, each under its own time limit (cap, in seconds):
#   0. preflight: GPU, driver, clocks; every dependency's version, and which one is missing;
#   1. install (90): pip install --no-build-isolation --no-deps -e . (builds the native
#      extension when nvcc is there); if that fails the source tree is used through PYTHONPATH;
#   2. loss GPU tests (110): pytest -m gpu tests/, except the trainer's (the loss kernels, and
#      the ImageNet loader and trainer on GPU-decoded batches when DALI is installed);
#   3. trainer GPU tests (90): pytest -m gpu tests/test_train_gpu.py (ResNet compiles);
#   4. loss benchmarks (100): benchmarks/test_loss_bench.py;
#   5. other benchmarks (130): every other file in benchmarks/ (the step benchmarks, and any
#      suite added later, picked up automatically: the ImageNet pipeline's mixed-mode decoding
#      when DALI is installed), compiled variants last within each.
# The caps add up to 520 s; a stage also leaves the later ones a reserve (time one stage leaves
# unused goes to the next), so the whole run ends within GPU_CHECK_SECONDS plus a few seconds.
# pytest runs with --continue-on-collection-errors: one broken file does not hide the others.
# Everything goes to DIR (default: $OUT when set, else benchmarks/results), named <date>-<gpu>
# (-<time> added if taken): .log (all output), -tests.xml / -train.xml / -loss.xml /
# -bench.xml (JUnit, per stage), -loss.json / -bench.json (pytest-benchmark), .jsonl (one line
# per benchmark, appended as each finishes) and .md (the summary table, rewritten after every
# stage): 10 files. A run cut short keeps whatever finished.
#
# Without a GPU (or with --dry-run, which hides any GPU) it runs on the CPU: no install, the GPU
# tests skip, the CPU benchmark cases run with a short time budget and one torch thread, and the
# results are named <date>-cpu (their tables say CPU). Exit status: 0 when no stage failed.
#
# Environment: PYTHON (default python3); GPU_CHECK_SECONDS (default 540); ONE_FAST_COMMIT
# (recorded commit, where the copy has no .git); ONE_FAST_BENCH_SECONDS (timing budget per case:
# default 0.5 on GPU, 0.25 on CPU).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DRY=0
INSTALL=1
OUT_DIR=${OUT:-benchmarks/results}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --no-install) INSTALL=0 ;;
    --out) OUT_DIR=$2; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""
fi
GPU=0
if [ "$DRY" = 0 ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
   && "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
then
  GPU=1
fi

if [ "$GPU" = 1 ]; then
  SLUG=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 \
         | tr '[:upper:]' '[:lower:]' | tr -s ' ' '-' | tr -cd 'a-z0-9._-')
  export ONE_FAST_BENCH_SECONDS=${ONE_FAST_BENCH_SECONDS:-0.5}
else
  SLUG=cpu
  export ONE_FAST_BENCH_SECONDS=${ONE_FAST_BENCH_SECONDS:-0.25}
  # One torch thread: on a shared CPU machine two threads wait on each other (BENCHMARKS.md).
  export ONE_FAST_BENCH_THREADS=${ONE_FAST_BENCH_THREADS:-1}
  export ONE_FAST_BENCH_DEVICE=cpu
fi
if [ -z "${ONE_FAST_COMMIT:-}" ] && git rev-parse --git-dir >/dev/null 2>&1; then
  ONE_FAST_COMMIT=$(git describe --always --dirty)
fi
export ONE_FAST_COMMIT=${ONE_FAST_COMMIT:-unknown}

mkdir -p "$OUT_DIR"
BASE="$OUT_DIR/$(date -u +%Y-%m-%d)-$SLUG"
if ls "$BASE".* "$BASE"-*.* >/dev/null 2>&1; then  # never mix with an earlier run's files
  BASE="$BASE-$(date -u +%H%M%S)"
fi
export ONE_FAST_BENCH_LOG="$BASE.jsonl"
exec > >(tee -a "$BASE.log") 2>&1
TEE_PID=$!

STAGES=()
FAILED=0
START=$SECONDS
DEADLINE=$((START + ${GPU_CHECK_SECONDS:-540}))

# limit CAP RESERVE: a stage's time limit: at most CAP seconds, leaving RESERVE seconds of the
# overall budget to the stages after it (time a stage leaves unused goes to the later ones).
limit() {
  local left=$((DEADLINE - SECONDS - $2))
  [ "$left" -gt "$1" ] && left=$1
  [ "$left" -lt 10 ] && left=10
  echo "$left"
}

# run_stage NAME SECONDS COMMAND...: run under a time limit (SIGINT first, so pytest still
# writes its reports), print and remember the outcome. pytest's 5 (nothing collected) is fine.
run_stage() {
  local name=$1 limit=$2 began=$SECONDS rc
  shift 2
  echo
  echo "=== [$name] (limit ${limit}s): $*"
  timeout -s INT -k 5 "$limit" "$@"
  rc=$?
  local outcome=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    outcome="TIMED OUT"
    FAILED=1
  elif [ "$rc" != 0 ] && [ "$rc" != 5 ]; then
    outcome=FAILED
    FAILED=1
  fi
  STAGES+=("| $name | $outcome | $rc | $((SECONDS - began)) s |")
  echo "=== [$name] $outcome (exit $rc, $((SECONDS - began)) s)"
  return 0
}

write_summary() {
  local inputs=()
  for f in "$BASE-loss.json" "$BASE-bench.json" "$BASE.jsonl"; do
    [ -f "$f" ] && inputs+=("$f")
  done
  if [ ${#inputs[@]} -gt 0 ]; then
    "$PY" benchmarks/summarize.py "${inputs[@]}" -o "$BASE.md"
  else
    echo "No benchmark results were recorded." > "$BASE.md"
  fi
  {
    echo
    echo "### gpu_check.sh stages ($([ "$GPU" = 1 ] && echo GPU || echo 'CPU, no GPU'))"
    echo
    echo "| stage | outcome | exit | time |"
    echo "|---|---|---:|---:|"
    printf '%s\n' "${STAGES[@]}"
  } >> "$BASE.md"
}

echo "=== one_fast gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $ONE_FAST_COMMIT"
echo "=== results: $BASE.*"
if [ "$GPU" = 1 ]; then
  echo "=== GPU found"
  nvidia-smi
  nvidia-smi --format=csv --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,\
memory.total,power.limit
elif [ "$DRY" = 1 ]; then
  echo "=== no GPU: dry run (any GPU hidden with CUDA_VISIBLE_DEVICES=''); running the CPU" \
       "cases (results marked CPU)"
else
  echo "=== no GPU: no usable nvidia-smi or torch.cuda.is_available() is False;" \
       "running the CPU cases (results marked CPU)"
fi
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //')
echo "CPU: $CPU_MODEL, $(nproc) cores"
# Preflight: import every dependency (what a failed import says is the useful part).
"$PY" - <<'EOF'
import importlib
import importlib.metadata as md
import platform

print(f"python {platform.python_version()}")
missing = []
# (distribution, import name, needed): nvidia-ml-py only adds GPU telemetry; without DALI the
# ImageNet GPU tests and the pipeline benchmark skip (this script never installs it: no internet)
for dist, module, needed in [
        ("torch", "torch", True), ("triton", "triton", True), ("numpy", "numpy", True),
        ("tqdm", "tqdm", True), ("scikit-learn", "sklearn", True),
        ("matplotlib", "matplotlib", True), ("pytest", "pytest", True),
        ("pytest-benchmark", "pytest_benchmark", True), ("hypothesis", "hypothesis", True),
        ("nvidia-ml-py", "pynvml", False), ("nvidia-dali-cuda130", "nvidia.dali", False)]:
    try:
        importlib.import_module(module)
        print(f"  {dist:<17} {md.version(dist)}")
    except Exception as exc:  # ImportError, or a broken install failing some other way
        print(f"  {dist:<17} MISSING ({type(exc).__name__}: {exc})"
              + ("" if needed else " -- optional: " + (
                  "the ImageNet (DALI) tests and pipeline benchmark skip" if module ==
                  "nvidia.dali" else "no NVML telemetry")))
        if needed:
            missing.append(dist)
print("preflight: missing " + ", ".join(missing) + " (the stages that need them will fail)"
      if missing else "preflight: every dependency imports")
try:
    import torch
except ImportError:
    raise SystemExit(0)
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, {p.multi_processor_count} SMs, "
          f"L2 {p.L2_cache_size / 2**20:.0f} MiB, {p.total_memory / 2**30:.1f} GiB")
EOF

if [ "$GPU" = 1 ] && [ "$INSTALL" = 1 ]; then
  run_stage install "$(limit 90 430)" \
    "$PY" -m pip install --no-build-isolation --no-deps -e .
  if ! "$PY" -c "import one_fast" 2>/dev/null; then
    echo "=== one_fast not importable after install: using the source tree (PYTHONPATH)"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  echo
  WHY=$([ "$GPU" = 1 ] && echo "--no-install" || echo "no GPU: the current environment is used")
  echo "=== [install] skipped ($WHY)"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "
import torch
from one_fast.loss import available_backends, native
dev = 'cuda' if torch.cuda.is_available() else 'cpu'
print(f'loss backends on {dev}: {available_backends(dev)}; native built: {native.BUILT}',
      '' if native.BUILT else f'({native.LOAD_ERROR})')
"

PYTEST=("$PY" -m pytest -q -ra -p no:cacheprovider --log-level=WARNING
        --continue-on-collection-errors)
run_stage "loss GPU tests" "$(limit 110 320)" \
  "${PYTEST[@]}" -m gpu tests/ --ignore=tests/test_train_gpu.py --junitxml="$BASE-tests.xml"
run_stage "trainer GPU tests" "$(limit 90 230)" \
  "${PYTEST[@]}" -m gpu tests/test_train_gpu.py --junitxml="$BASE-train.xml"

if "$PY" -c "import pytest_benchmark" 2>/dev/null; then
  run_stage "loss benchmarks" "$(limit 100 130)" \
    "${PYTEST[@]}" benchmarks/test_loss_bench.py --benchmark-only \
    --benchmark-columns=median,rounds --benchmark-json="$BASE-loss.json" \
    --junitxml="$BASE-loss.xml"
  write_summary
  run_stage "other benchmarks" "$(limit 130 5)" \
    "${PYTEST[@]}" benchmarks/ --ignore=benchmarks/test_loss_bench.py --benchmark-only \
    --benchmark-columns=median,rounds --benchmark-json="$BASE-bench.json" \
    --junitxml="$BASE-bench.xml"
else
  echo "=== pytest-benchmark is not installed: benchmark stages skipped"
  STAGES+=("| benchmarks | SKIPPED (no pytest-benchmark) | – | 0 s |")
  FAILED=1
fi
write_summary

echo
cat "$BASE.md"
echo
echo "=== done in $((SECONDS - START)) s; files:"
ls -l "$BASE"*
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null  # the log is complete before the script returns
exit "$FAILED"
