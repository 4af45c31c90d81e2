"""The local launcher: N runs of a table at once on this machine (``--parallel N``).

Each run gets its own GPU(s) (``CUDA_VISIBLE_DEVICES``) or, without GPUs, its share of the CPU
threads; a student starts when its teacher has finished. Each run is a :class:`.jobs.RunJob`
(lock, resume, ``launch.json``, TABLE.md), executed in a thread that waits on its trainer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace

import torch

from .jobs import JobResult, RunJob, table_jobs
from .runner import RunnerOptions, resolve_precision
from .status import FAILED, rewrite_table
from .tables import Table

Say = Callable[[str], None]


def local_slots(parallel: int, gpus_per_run: int, gpu_count: int,
                cpu_count: int) -> list[dict[str, str]]:
    """The environment of each of ``parallel`` concurrent local runs.

    With GPUs: run k sees GPUs k*g .. k*g+g-1 (``CUDA_VISIBLE_DEVICES``, g = gpus_per_run).
    Without: each run gets cpu_count // parallel threads (at least 1).

    Raises:
        ValueError: parallel < 1, or more GPUs asked for than the machine has (says how many).
    """
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    if gpus_per_run < 0:
        raise ValueError(f"--gpus-per-run must be >= 0, got {gpus_per_run}")
    need = parallel * gpus_per_run
    if gpus_per_run > 1 and need > gpu_count or gpu_count and need > gpu_count:
        raise ValueError(f"--parallel {parallel} x --gpus-per-run {gpus_per_run} needs {need} "
                         f"GPUs; this machine has {gpu_count}")
    if gpu_count and gpus_per_run:
        return [{"CUDA_VISIBLE_DEVICES": ",".join(str(k * gpus_per_run + j)
                                                  for j in range(gpus_per_run))}
                for k in range(parallel)]
    threads = str(max(1, cpu_count // parallel))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(parallel)]


def _execute(job: RunJob) -> JobResult:
    try:
        return job()
    except Exception as err:  # a failed run is reported; the others go on
        return JobResult(FAILED, str(err))


def launch_local(table: Table, options: RunnerOptions, parallel: int, gpus_per_run: int = 1,
                 say: Say = print) -> dict[tuple[str, int], JobResult]:
    """Train the table's unfinished runs, ``parallel`` at a time, on this machine.

    Returns:
        (configuration, seed) -> what each job did.

    Raises:
        ValueError: bad --parallel/--gpus-per-run (see :func:`local_slots`).
    """
    options = replace(options, precision=resolve_precision(options.precision))
    slots = local_slots(parallel, gpus_per_run, torch.cuda.device_count(),
                        os.cpu_count() or 1)
    pending = table_jobs(table, options, max(1, gpus_per_run), "local")
    teacher_of = {(j.config, j.seed): j.planned().teacher for j in pending}
    results: dict[tuple[str, int], JobResult] = {}
    running: dict[Future, tuple[RunJob, dict[str, str]]] = {}

    def waiting_for_teacher(job: RunJob) -> bool:
        teacher = teacher_of[(job.config, job.seed)]
        return teacher is not None and (teacher.config.name, teacher.seed) not in results

    with ThreadPoolExecutor(len(slots)) as pool:
        while pending or running:
            for job in [j for j in pending if not waiting_for_teacher(j)]:
                if not slots:
                    break
                pending.remove(job)
                slot = slots.pop(0)
                job = replace(job, env=slot)
                share = ", ".join(f"{k}={v}" for k, v in slot.items())
                say(f"{job.config} seed {job.seed}: started ({share}), log "
                    f"{job.planned().log_path}")
                running[pool.submit(_execute, job)] = (job, slot)
            if not running:  # only students whose teachers never ran: impossible by planning
                raise RuntimeError("the local launcher has runs waiting for unplanned teachers")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job, slot = running.pop(future)
                slots.append(slot)
                result = future.result()
                results[(job.config, job.seed)] = result
                tail = f" in {result.seconds:.0f} s" if result.seconds else ""
                say(f"{job.config} seed {job.seed}: {result.status}{tail}"
                    + (f" ({result.detail})" if result.detail else ""))
    rewrite_table(table, options)
    return results


__all__ = ["launch_local", "local_slots"]
