"""Benchmark fixtures: the device, its measured copy bandwidth, and what every result records.

Each benchmark's ``extra_info`` gets ``platform`` ("CPU" or "CUDA"), ``env`` (versions, device,
commit, threads; :func:`benchmarks.environment.environment`), the 1-minute load average before it
ran, and on CUDA ``gpu``: an NVML sample (name, driver, clocks, memory, power, utilisation) taken
right after the measurement; without NVML that key is simply absent.

With ``ONE_FAST_BENCH_LOG=path.jsonl`` every finished benchmark is also appended to that file at
once (one JSON object per line), so a run cut short keeps what it measured; ``summarize.py``
reads these lines as well as pytest-benchmark's ``--benchmark-json`` files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from .environment import DEVICE, LABEL, environment, load_average, telemetry
from .harness import copy_bandwidth as measure_copy_bandwidth

LOG_ENV = "ONE_FAST_BENCH_LOG"


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The benchmark device: CUDA when available (``ONE_FAST_BENCH_DEVICE`` overrides)."""
    return DEVICE


@pytest.fixture(scope="session")
def copy_bandwidth() -> dict[str, float | str]:
    """The device's copy bandwidth (GB/s, read + write), measured once per session."""
    return measure_copy_bandwidth()


@pytest.fixture(autouse=True)
def _record_environment(request):
    """Attach environment facts before, and GPU telemetry after, each benchmark."""
    torch.manual_seed(0)
    if "benchmark" not in request.fixturenames:
        yield
        return
    benchmark = request.getfixturevalue("benchmark")
    benchmark.extra_info.update(platform=LABEL, env=environment(), load_avg_1m=load_average())
    yield
    sample = telemetry()
    if sample:
        benchmark.extra_info["gpu"] = sample
    _append_log(benchmark)


def _append_log(benchmark) -> None:
    path = os.environ.get(LOG_ENV)
    if not path or benchmark.stats is None or not benchmark.stats.stats.rounds:
        return
    stats = benchmark.stats.stats
    record = {
        "name": benchmark.name, "fullname": benchmark.fullname, "group": benchmark.group,
        "param": benchmark.param,
        "stats": {key: getattr(stats, key) for key in
                  ("min", "max", "mean", "stddev", "median", "rounds")},
        "extra_info": benchmark.extra_info,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
