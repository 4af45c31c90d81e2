"""The Slurm launcher: one Slurm job per run of a table, submitted as job arrays (submitit).

Students' arrays depend on their teachers' jobs (``afterok``), so nothing needs the runner to stay
alive (``--no-wait``). A job that Slurm preempts or warns of its time limit is requeued by
submitit (:meth:`.jobs.RunJob.checkpoint`) and resumes its run from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..runs.status import FINISHED
from .jobs import RunJob, table_jobs
from .runner import RunnerOptions, shown_command, table_dir
from .slurm import (
    SlurmError,
    live_jobs,
    require_sbatch,
    require_submitit,
    slurm_message,
)
from .status import (
    QUEUED,
    RUNNING,
    read_jobs,
    record_jobs,
    rewrite_table,
    run_status,
)
from .tables import Table

Say = Callable[[str], None]
SIGNAL_SLACK_S = 60  # Slurm sends the --signal warning up to this much earlier than asked


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
    return table_jobs(table, options, slurm.tasks, "slurm")


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
    live = live_jobs()
    if live is None:  # submitting blind could queue a second job for a queued or running run
        raise SlurmError("squeue did not answer, so which runs are already queued or running "
                         "cannot be told; nothing was submitted (try again when it answers)")
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
            f"  {shown_command(job.command())}")
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
    result = rewrite_table(table, options)
    return sum(result.outcome(r).status != FINISHED for r in result.runs)


__all__ = ["SlurmOptions", "launch_slurm", "slurm_jobs", "slurm_precision", "wait_for_jobs"]
