"""Launchers: who executes a table's runs. The runner plans them (:func:`.runner.plan_runs`);
each run becomes a :class:`.jobs.RunJob`; a launcher executes the jobs.

* :func:`launch_local` -- N runs at once on this machine (``--parallel N``), each with its own
  GPU(s) (``CUDA_VISIBLE_DEVICES``) or its share of the CPU threads; a student starts when its
  teacher has finished.
* :func:`launch_slurm` -- one Slurm job per run, submitted as job arrays through submitit;
  students' arrays depend on their teachers' jobs (``afterok``), so nothing needs the runner to
  stay alive (``--no-wait``). A job that Slurm preempts or times out is requeued by submitit
  and resumes its run from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .jobs import JobResult, RunJob
from .runner import (
    FINISHED,
    NEW,
    RunnerOptions,
    plan_runs,
    resolve_precision,
    shown_command,
    table_dir,
)
from .slurm import (
    SlurmError,
    live_jobs,
    require_sbatch,
    require_submitit,
    slurm_message,
)
from .status import (
    FAILED,
    QUEUED,
    RUNNING,
    collect_result,
    read_jobs,
    record_jobs,
    rewrite_table,
    run_status,
)
from .tables import Table

Say = Callable[[str], None]
SIGNAL_SLACK_S = 60  # Slurm sends the --signal warning up to this much earlier than asked


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


def _jobs(table: Table, options: RunnerOptions, tasks: int, launcher: str) -> list[RunJob]:
    return [RunJob(table, options, run.config.name, run.seed, tasks, launcher)
            for run in plan_runs(table, options)]


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
    pending = _jobs(table, options, max(1, gpus_per_run), "local")
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


@dataclass(frozen=True)
class SlurmOptions:
    """What each run asks Slurm for.

    Attributes:
        partition: ``--partition`` (None: the cluster's default).
        time_min: the time limit in minutes (``--time``).
        gpus_per_run: GPUs of one run (one task per GPU; 0: a CPU-only run).
        tasks_per_run: processes of one run (DDP when > 1); None: max(1, gpus_per_run).
        cpus_per_task: ``--cpus-per-task`` (per GPU when runs have GPUs).
        mem: ``--mem`` (e.g. "32G").
        account: ``--account``.
        qos: ``--qos``.
        setup: shell lines run before the job (module load, venv activation).
        extra: more submitit parameters (its names) or sbatch flags, by name.
        signal_delay_s: how long before the time limit Slurm warns the job (it then requeues).
        max_timeouts: how many times a job that reaches its time limit is requeued (submitit's
            max_num_timeout; preemptions do not count).

    Raises:
        ValueError: negative GPUs, fewer than one task, tasks != GPUs (one task per GPU).
    """

    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_run: int = 1
    tasks_per_run: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    setup: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()
    signal_delay_s: int = 120
    max_timeouts: int = 20

    def __post_init__(self):
        if self.gpus_per_run < 0:
            raise ValueError(f"--gpus-per-run must be >= 0, got {self.gpus_per_run}")
        if self.tasks_per_run is not None and self.tasks_per_run < 1:
            raise ValueError(f"--tasks-per-run must be >= 1, got {self.tasks_per_run}")
        if self.gpus_per_run and self.tasks != self.gpus_per_run:
            raise ValueError(f"--tasks-per-run {self.tasks} must equal --gpus-per-run "
                             f"{self.gpus_per_run} (one task per GPU)")
        timeouts = dict(self.extra).get("max_num_timeout", "0")
        if not timeouts.isdigit():
            raise ValueError(f"--slurm-extra max_num_timeout must be a count, got {timeouts!r}")
        delay = int(dict(self.extra).get("signal_delay_s", self.signal_delay_s))
        if self.time_min * 60 < delay + SIGNAL_SLACK_S:
            # Slurm may warn up to a minute early: a job warned before Python has started
            # dies of the signal instead of requeueing.
            raise ValueError(f"--slurm-time {self.time_min} min is too short: the requeue "
                             f"warning comes {delay} s (up to {delay + SIGNAL_SLACK_S} s) "
                             "before the limit; give a longer time or a smaller signal_delay_s")

    @property
    def tasks(self) -> int:
        """Processes of one run."""
        return self.tasks_per_run or max(1, self.gpus_per_run)

    def executor_parameters(self) -> dict:
        """submitit SlurmExecutor parameters for one run's job."""
        params: dict = {"time": self.time_min, "ntasks_per_node": self.tasks,
                        "signal_delay_s": self.signal_delay_s, "job_name": "one_fast",
                        "additional_parameters": {"kill-on-invalid-dep": "yes"}}
        if self.gpus_per_run:
            params["gpus_per_task"] = 1
        if self.tasks > 1:  # submitit's own process once; the run's srun starts the tasks
            params["srun_args"] = ["--ntasks=1", "--overlap"]
        for name in ("partition", "cpus_per_task", "mem", "account", "qos"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        if self.setup:
            params["setup"] = list(self.setup)
        valid = require_submitit().SlurmExecutor._valid_parameters()
        for key, value in self.extra:
            if key == "max_num_timeout":  # an executor setting, not an sbatch one
                continue
            value = int(value) if value.isdigit() else value
            if key in valid:
                params[key] = value
            else:
                params["additional_parameters"][key] = value
        return params


def slurm_precision(options: RunnerOptions, slurm: SlurmOptions) -> RunnerOptions:
    """``--precision auto`` for runs on the cluster: bf16 with GPUs, fp32 without (decided
    here, not on the login node's own hardware)."""
    if options.precision != "auto":
        return options
    return replace(options, precision="bf16" if slurm.gpus_per_run else "none")


def slurm_jobs(table: Table, options: RunnerOptions, slurm: SlurmOptions) -> list[RunJob]:
    """Every run of ``table`` as the job the Slurm launcher submits for it."""
    return _jobs(table, options, slurm.tasks, "slurm")


def _submit(executor, jobs: list[RunJob], dependency: str | None) -> list[str]:
    executor.update_parameters(dependency=dependency)
    # submitit echoes sbatch's stderr when it fails; the error we raise carries it in one line.
    with contextlib.redirect_stderr(io.StringIO()), executor.batch():
        submitted = [executor.submit(job) for job in jobs]
    return [str(s.job_id) for s in submitted]


def launch_slurm(table: Table, options: RunnerOptions, slurm: SlurmOptions,
                 say: Say = print) -> dict[str, str]:
    """Submit the table's unfinished runs as Slurm job arrays (teachers before students).

    Runs already finished, or queued/running under a live job or process, are not submitted
    again. Nothing is written into run folders here: a refused submission leaves none.

    Returns:
        run folder -> job id of every run submitted now.

    Raises:
        SlurmError: submitit or sbatch missing, or Slurm refused (its one-line message).
    """
    submitit = require_submitit()
    require_sbatch()
    options = slurm_precision(options, slurm)
    folder = table_dir(table, options)
    live = live_jobs() or {}
    recorded = read_jobs(folder)
    by_key = {}
    to_submit: list[RunJob] = []
    for job in slurm_jobs(table, options, slurm):
        run = job.planned()
        by_key[(job.config, job.seed)] = run
        state, detail = run_status(run, options, recorded, live)
        if state == FINISHED:
            say(f"{job.config} seed {job.seed}: finished earlier, skipped")
        elif state in (QUEUED, RUNNING):
            say(f"{job.config} seed {job.seed}: {state} ({detail}), not submitted again")
        else:
            to_submit.append(job)
    if not to_submit:
        return {}
    # The outermost folder this submission creates: removed again if Slurm refuses.
    created = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
    logs = folder / "slurm" / time.strftime("%Y%m%d-%H%M%S")
    timeouts = dict(slurm.extra).get("max_num_timeout", str(slurm.max_timeouts))
    executor = submitit.SlurmExecutor(folder=logs, max_num_timeout=int(timeouts))
    executor.update_parameters(**slurm.executor_parameters())

    def rel(run_dir: Path) -> str:  # the jobs file's key
        return str(run_dir.relative_to(Path(options.out_dir)))

    # Runs without a teacher (teachers among them) in one array; each teacher's students in
    # an array that starts only once that teacher's job has succeeded.
    first: list[RunJob] = []
    students: dict[str, list[RunJob]] = {}
    for job in to_submit:
        teacher = by_key[(job.config, job.seed)].teacher
        if teacher is None:
            first.append(job)
        else:
            students.setdefault(rel(teacher.run_dir), []).append(job)
    ids: dict[str, str] = {}
    try:
        if first:
            for job, jid in zip(first, _submit(executor, first, None), strict=True):
                ids[rel(job.planned().run_dir)] = jid
        for teacher_key, jobs in students.items():
            teacher_id = ids.get(teacher_key) or (recorded.get(teacher_key)
                                                  if recorded.get(teacher_key) in live else None)
            dependency = f"afterok:{teacher_id}" if teacher_id else None
            for job, jid in zip(jobs, _submit(executor, jobs, dependency), strict=True):
                ids[rel(job.planned().run_dir)] = jid
    except Exception as err:
        if not ids:
            shutil.rmtree(created or logs, ignore_errors=True)
        if ids:
            record_jobs(folder, ids)
        raise SlurmError(f"Slurm refused the submission: {slurm_message(err)}") from err
    record_jobs(folder, ids)
    for job in to_submit:
        say(f"{job.config} seed {job.seed}: Slurm job {ids[rel(job.planned().run_dir)]}\n"
            f"  {shown_command(job.command(NEW))}")
    return ids


def wait_for_jobs(ids: dict[str, str], table: Table, options: RunnerOptions,
                  poll_s: float = 15.0, say: Say = print) -> int:
    """Wait until none of ``ids`` is queued or running; rewrite TABLE.md; the number of runs
    of the table that are not finished."""
    pending = set(ids.values())
    while pending:
        time.sleep(poll_s)
        live = live_jobs()
        if live is None:
            raise SlurmError("squeue failed while waiting; the jobs go on: check them with "
                             "--status")
        gone = {j for j in pending if j not in live}
        for job_id in sorted(gone):
            say(f"Slurm job {job_id} ended")
        pending -= gone
    rewrite_table(table, options)
    result = collect_result(table, options)
    return sum(result.outcome(r).status != FINISHED for r in result.runs)


__all__ = ["SlurmOptions", "launch_local", "launch_slurm", "local_slots", "slurm_jobs",
           "slurm_precision", "wait_for_jobs"]
