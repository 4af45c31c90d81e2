"""Which device the benchmarks run on, and the facts recorded with every result.

The device is fixed when this module is imported (test ids name it): CUDA when torch sees a GPU,
else the CPU; ``ONE_FAST_BENCH_DEVICE=cpu`` forces the CPU on a GPU machine, and
``ONE_FAST_BENCH_THREADS=k`` sets torch's CPU threads (recorded with every result).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import torch

from one_fast.engine import metrics

if os.environ.get("ONE_FAST_BENCH_THREADS"):
    # On a shared CPU machine, fewer threads than cores keeps OpenMP threads from waiting on a
    # descheduled partner (seen here: medians 8 to 400 times slower at a load average of 2 to 3
    # on 2 cores with 2 threads).
    torch.set_num_threads(int(os.environ["ONE_FAST_BENCH_THREADS"]))

DEVICE = torch.device(os.environ.get("ONE_FAST_BENCH_DEVICE")
                      or ("cuda" if torch.cuda.is_available() else "cpu"))
# "CPU" or "CUDA": printed in test ids, extra_info and result tables, so that CPU figures can
# never be mistaken for GPU ones.
LABEL = "CUDA" if DEVICE.type == "cuda" else "CPU"
REPO = Path(__file__).resolve().parent.parent


def is_cuda() -> bool:
    """Whether the benchmarks run on a CUDA device."""
    return DEVICE.type == "cuda"


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    """The GPU's name on CUDA; the processor's model on the CPU."""
    return torch.cuda.get_device_name(DEVICE) if is_cuda() else cpu_model()


def cache_bytes() -> int:
    """The largest cache that could hold a benchmark's inputs between repetitions.

    CUDA: the GPU's L2. CPU: the last-level cache that sysfs lists for CPU 0 (32 MiB if none
    is listed), which rotation must overflow just the same.
    """
    if is_cuda():
        return int(torch.cuda.get_device_properties(DEVICE).L2_cache_size)
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=32 * 2**20)


def _git_commit() -> str:
    """``ONE_FAST_COMMIT`` if set (copies without .git), else ``git describe --dirty``."""
    if os.environ.get("ONE_FAST_COMMIT"):
        return os.environ["ONE_FAST_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@cache
def environment() -> dict[str, Any]:
    """Versions, device and machine facts, gathered once per session."""
    info: dict[str, Any] = {
        "platform": LABEL,
        "device": str(DEVICE),
        "device_name": device_name(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "commit": _git_commit(),
    }
    if is_cuda():
        props = torch.cuda.get_device_properties(DEVICE)
        info.update(cuda=torch.version.cuda, multiprocessors=props.multi_processor_count,
                    l2_cache_mb=props.L2_cache_size / 2**20,
                    memory_gb=props.total_memory / 2**30)
    return info


def load_average() -> float | None:
    """The 1-minute load average: CPU timings from a busy machine read slower."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def telemetry() -> dict[str, Any]:
    """A point sample of the GPU (NVML) right after a measurement; ``{}`` on the CPU."""
    return metrics.gpu_telemetry(DEVICE)
