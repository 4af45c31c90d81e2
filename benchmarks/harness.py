"""Timing shared by the suites: warm-up, rotated inputs, CUDA-event medians, honest wall times.

How a case is timed (:func:`measure`):

1. warm-up calls (compilation, autotuning, allocator growth, CUDA-graph capture happen here);
2. the number of timed repetitions is chosen from the warm-up calls' times and the budget
   ``ONE_FAST_BENCH_SECONDS`` (default 1 s per case), within the case's bounds;
3. CUDA: each repetition is bracketed by CUDA events, with no host synchronisation between
   repetitions (as ``triton.testing.do_bench`` does); the median of those device times is the
   figure of record. Then pytest-benchmark times the same call *with* a synchronisation inside,
   so the wall times it prints are honest too (they include launch and sync overhead).
   CPU: pytest-benchmark's wall-clock median is the figure of record.

Every repetition takes the next of several preallocated input sets, enough that together they
overflow the cache (:func:`rotation_count`), so repeated runs do not measure a warm cache.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .environment import DEVICE, cache_bytes, is_cuda

SECONDS = float(os.environ.get("ONE_FAST_BENCH_SECONDS", "1.0"))
MAX_SETS = 1024


def synchronize() -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if is_cuda():
        torch.cuda.synchronize(DEVICE)


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def rotation_count(bytes_per_set: int) -> int:
    """Input sets to rotate through so that together they exceed twice the cache."""
    return max(1, min(MAX_SETS, math.ceil(2 * cache_bytes() / max(bytes_per_set, 1))))


@dataclass(frozen=True)
class Timing:
    """What one case measured (seconds per call).

    Attributes:
        median_s: the figure of record: CUDA-event median on CUDA, wall-clock median on CPU.
        timer: "cuda_events" or "wall".
        wall_median_s: pytest-benchmark's median (host wall clock; on CUDA it includes the
            synchronisation after each call).
        rounds: timed repetitions.
        warmup: untimed calls before them.
    """

    median_s: float
    timer: str
    wall_median_s: float
    rounds: int
    warmup: int

    def as_info(self) -> dict[str, float | int | str]:
        """The fields for pytest-benchmark's ``extra_info`` (milliseconds)."""
        return {"median_ms": self.median_s * 1e3, "timer": self.timer,
                "wall_median_ms": self.wall_median_s * 1e3, "rounds": self.rounds,
                "warmup_calls": self.warmup}


def measure(benchmark, call: Callable[[int], object], sets: int, *, warmup: int = 3,
            min_rounds: int = 5, max_rounds: int = 200,
            budget_s: float | None = None) -> Timing | None:
    """Time ``call(i)`` (i = the input set to use) as described in the module docstring.

    Args:
        benchmark: pytest-benchmark's fixture.
        call: runs one repetition on input set ``i``; must not synchronise itself.
        sets: number of input sets; repetition k uses set k % sets.
        warmup: untimed calls first (at least 1).
        min_rounds, max_rounds: bounds on the timed repetitions.
        budget_s: seconds to spend timing (default ``ONE_FAST_BENCH_SECONDS``).

    Returns:
        The :class:`Timing`, or None under ``--benchmark-disable`` (the call then runs once).
    """
    counter = itertools.count()

    def step() -> None:
        call(next(counter) % sets)

    if benchmark.disabled:
        benchmark.pedantic(step)
        return None
    # Warm-up calls, each timed roughly (with a sync) to size the measurement: the fastest
    # after the first, which includes compilation and first-touch allocations.
    warmup_times = []
    for _ in range(max(1, warmup)):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        warmup_times.append(time.perf_counter() - start)
    estimate = max(min(warmup_times[1:] or warmup_times), 1e-7)
    budget = SECONDS if budget_s is None else budget_s
    rounds = int(min(max_rounds, max(min_rounds, budget / estimate)))

    if is_cuda():
        median_s = _cuda_event_median(step, rounds)

        def timed() -> None:
            step()
            torch.cuda.synchronize(DEVICE)
    else:
        median_s = None
        timed = step
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    wall = benchmark.stats.stats.median
    if median_s is None:
        return Timing(wall, "wall", wall, rounds, len(warmup_times))
    return Timing(median_s, "cuda_events", wall, rounds, len(warmup_times))


def _cuda_event_median(step: Callable[[], None], rounds: int) -> float:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rounds)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rounds)]
    torch.cuda.synchronize(DEVICE)
    for start, end in zip(starts, ends, strict=True):
        start.record()
        step()
        end.record()
    torch.cuda.synchronize(DEVICE)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)) / 1e3


def copy_bandwidth(repeats: int = 7) -> dict[str, float | str]:
    """Measure the device's copy bandwidth once: bytes read plus bytes written per second.

    CUDA: a 1 GiB device-to-device ``copy_`` timed with CUDA events. CPU: a 256 MiB in-memory
    ``copy_`` (torch's threads) timed with the wall clock. Median of ``repeats`` after warm-up.

    Returns:
        ``{"gbps": float, "bytes": int, "method": str}`` (GB = 1e9 bytes).
    """
    size = 2**30 if is_cuda() else 2**28
    src = torch.empty(size, dtype=torch.uint8, device=DEVICE).random_()
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    synchronize()
    times = []
    for _ in range(repeats):
        if is_cuda():
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start_s = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - start_s)
    seconds = statistics.median(times)
    method = (f"CUDA device-to-device copy_ of {size // 2**20} MiB, CUDA events"
              if is_cuda() else
              f"CPU memcpy (torch copy_, torch threads: {torch.get_num_threads()}) of "
              f"{size // 2**20} MiB, wall clock")
    return {"gbps": 2 * size / seconds / 1e9, "bytes": 2 * size,
            "method": f"{method}, median of {repeats}"}
