"""One run of a table as a job any launcher can execute: a thread of the local runner, or a
Slurm job (submitit pickles it and calls it on the node).

A job re-plans its table, takes the run's lock (a live holder elsewhere means the run is
already being trained: the job says so and trains nothing), trains the run with its ordinary
``python -m one_fast.train`` command (``--resume`` when a checkpoint exists, so a requeued job
continues where the last one stopped), records ``launch.json`` in the run folder (launcher, job
id, requeues so far, outcome) and rewrites the table's TABLE.md.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from ..runs.status import FINISHED, RunState
from .locks import RunLock, RunLocked
from .runner import (
    PlannedRun,
    RunnerOptions,
    command_for,
    plan_runs,
    run_state,
    shown_command,
    train,
)
from .slurm import live_jobs
from .status import FAILED, INTERRUPTED, RUNNING, read_launch, rewrite_table, write_launch
from .tables import Table

INTERRUPTED_EXIT = 130  # the trainer's exit code after Ctrl-C


def requeues() -> int:
    """How many times Slurm has requeued this job (``SLURM_RESTART_COUNT``; 0 outside Slurm)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def distributed_command(command: list[str], tasks: int, launcher: str) -> list[str]:
    """The run's command for ``tasks`` processes: ``srun`` one task each (Slurm), or
    ``torchrun`` on this machine (local); the command itself for one task."""
    if tasks <= 1:
        return list(command)
    if launcher == "slurm":
        return ["srun", "--overlap", f"--ntasks={tasks}", "--kill-on-bad-exit=1", *command]
    python, module_flag, module, *rest = command
    return [python, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={tasks}", module_flag, module, *rest]


@dataclass
class JobResult:
    """What one job did: "finished", "failed", "interrupted" (by a signal) or "running"
    (another holder trains the run)."""

    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class RunJob:
    """One configuration x seed of a table, executable anywhere the table's folders are.

    Attributes:
        table: the table (possibly restricted with ``only``).
        options: the runner's options (precision resolved by the launcher, never "auto", so
            the job's node plans the same folders as the submitting host).
        config: the configuration's name.
        seed: the seed.
        tasks: processes of the run (> 1: DDP, one per GPU).
        launcher: "local" or "slurm".
        env: environment variables for the trainer (a GPU or CPU-thread share).
        run: the run as :func:`.runner.plan_runs` planned it, when the caller has it (planning
            the whole table again for each job is quadratic in the table's runs).
    """

    table: Table
    options: RunnerOptions
    config: str
    seed: int
    tasks: int = 1
    launcher: str = "local"
    env: dict[str, str] = field(default_factory=dict)
    run: PlannedRun | None = field(default=None, repr=False)

    def planned(self) -> PlannedRun:
        """This job's run as the runner plans it (given, or planned from the table)."""
        if self.run is not None:
            return self.run
        for run in plan_runs(self.table, self.options):
            if run.config.name == self.config and run.seed == self.seed:
                return run
        raise ValueError(f"table {self.table.name!r} has no run {self.config} seed {self.seed}")

    def command(self, state: RunState | None = None) -> list[str]:
        """The command that trains this run from ``state`` (None: from scratch), printed and
        re-runnable by hand."""
        run = self.planned()
        base = list(run.command) if state is None else command_for(run, state,
                                                                   self.options.rerun_stale)
        return distributed_command(base, self.tasks, self.launcher)

    def _record(self, run: PlannedRun, status: str, command: list[str], error: str = "") -> None:
        if not run.run_dir.is_dir():
            return
        record = {**read_launch(run.run_dir), "launcher": self.launcher,
                  "job_id": os.environ.get("SLURM_JOB_ID", ""), "host": socket.gethostname(),
                  "requeues": requeues(), "status": status, "error": error,
                  "command": shown_command(command), "updated": time.time()}
        write_launch(run.run_dir, record)

    def __call__(self) -> JobResult:
        """Train the run unless it is finished or trained elsewhere; rewrite TABLE.md.

        Raises:
            RuntimeError: the training failed (Slurm then marks the job failed, so students
                depending on it are cancelled).
        """
        run = self.planned()
        if run.teacher is not None and run_state(run.teacher).state != FINISHED:
            raise RuntimeError(f"its teacher run {run.teacher.run_dir} did not finish")
        live = live_jobs if self.launcher == "slurm" else None
        try:
            with RunLock(run.run_dir, live):
                result = self._train(run)
        except RunLocked as err:
            return JobResult(RUNNING, str(err))
        rewrite_table(self.table, self.options)
        if result.status != FINISHED:
            raise RuntimeError(f"{run.config.name} seed {run.seed}: {result.detail}")
        return result

    def _train(self, run: PlannedRun) -> JobResult:
        state = run_state(run)
        if state.state == FINISHED:
            return JobResult(FINISHED, "finished earlier")
        if command_for(run, state, self.options.rerun_stale) is None:
            return JobResult(state.state, f"{state.detail}; --rerun-stale replaces it")
        command = self.command(state)
        if state.resumable:
            self._record(run, RUNNING, command)
        print(f"{run.config.name} seed {run.seed}: {shown_command(command)}", flush=True)
        try:
            code, seconds, reason = train(command, run.log_path, self.env)
        except BaseException:  # submitit requeueing (SystemExit) or giving up on this job
            self._record(run, INTERRUPTED, command, "stopped (preempted, timed out or "
                         "interrupted) after its last checkpoint; the next attempt resumes")
            raise
        after = run_state(run)
        finished = code == 0 and after.state == FINISHED
        if not finished and not reason:
            reason = f"the trainer exited but the run is {after.state}: {after.detail}"
        status = FINISHED if finished else FAILED
        if code < 0 or code == INTERRUPTED_EXIT:  # a signal (Slurm's requeue, preemption or
            # cancel) or Ctrl-C: the run keeps its last checkpoint and resumes next time
            why = "Ctrl-C" if code == INTERRUPTED_EXIT else f"signal {-code}"
            status, reason = INTERRUPTED, (f"stopped by {why} after the checkpoint of its last "
                                           "finished epoch; the next attempt resumes")
        self._record(run, status, command, reason)
        return JobResult(status, reason, seconds)

    def checkpoint(self):
        """submitit's hook on preemption or an approaching time limit: requeue this same job;
        when it starts again it resumes the run from its last checkpoint."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def table_jobs(table: Table, options: RunnerOptions, tasks: int, launcher: str) -> list[RunJob]:
    """Every run of ``table`` as a job of ``launcher`` with ``tasks`` processes per run."""
    return [RunJob(table, options, run.config.name, run.seed, tasks, launcher, run=run)
            for run in plan_runs(table, options)]


__all__ = ["JobResult", "RunJob", "distributed_command", "requeues", "table_jobs"]
