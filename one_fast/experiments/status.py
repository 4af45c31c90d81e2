"""Where a table's runs stand, read from their folders (and from Slurm's queue when present).

Every run folder may be written by another process (a local runner, a Slurm job), so the table
so far is rebuilt from the folders alone: :func:`collect_result`. :func:`rewrite_table` writes
TABLE.md from it under an exclusive lock, so two jobs finishing at once write one after the
other and the last write holds both. :func:`run_status` names each run's state for ``--status``.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..files import atomic_write
from ..runs.provenance import PROVENANCE_NAME
from ..runs.status import FAILED, FINISHED, MISSING, PARTIAL, STALE
from .locks import holder_alive, lock_path, read_holder
from .report import write_table
from .runner import (
    Outcome,
    PlannedRun,
    RunnerOptions,
    TableResult,
    held_outcome,
    plan_runs,
    run_state,
    table_dir,
)
from .slurm import live_jobs
from .tables import Table

LAUNCH_NAME = "launch.json"  # in the run folder: launcher, job id, requeues, last status
JOBS_NAME = "slurm_jobs.json"  # in the table folder: run folder -> Slurm job id
QUEUED, RUNNING = "queued", "running"
INTERRUPTED = "interrupted"  # a launch.json status: stopped by a signal, resumes next time
# --status: finished, running, queued, partial (started, nobody training it: the next launch
# resumes it), failed, stale (trained with other settings), missing (not started).
STATES = (FINISHED, RUNNING, QUEUED, PARTIAL, FAILED, STALE, MISSING)


def read_launch(run_dir: Path) -> dict:
    """The run's ``launch.json`` ({} when absent or unreadable)."""
    try:
        data = json.loads((run_dir / LAUNCH_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def launch_failure(run_dir: Path) -> str | None:
    """The error of the launcher's last attempt on ``run_dir`` when that attempt failed and
    nothing has trained in the folder since (a later resume, by hand or by another runner,
    rewrites run.json after it); else None."""
    launch = read_launch(run_dir)
    if launch.get("status") != FAILED:
        return None
    try:
        retried = (run_dir / PROVENANCE_NAME).stat().st_mtime > float(launch.get("updated", 0))
    except (OSError, TypeError, ValueError):
        retried = False
    return None if retried else str(launch.get("error", ""))


def write_launch(run_dir: Path, record: dict) -> None:
    """Write ``launch.json`` atomically into the run folder."""
    text = json.dumps(record, indent=1, sort_keys=True)
    atomic_write(run_dir / LAUNCH_NAME, lambda f: f.write(text.encode("utf-8")))


def _key(run: PlannedRun, options: RunnerOptions) -> str:
    return str(run.run_dir.relative_to(Path(options.out_dir)))


@contextmanager
def table_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the table folder's ``.table.lock`` for the ``with`` body."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".table.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def read_jobs(folder: Path) -> dict[str, str]:
    """The Slurm job id recorded for each run (by run folder, relative to the table folder)."""
    try:
        data = json.loads((folder / JOBS_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record_jobs(folder: Path, jobs: dict[str, str]) -> None:
    """Add run -> job id entries to the table's ``slurm_jobs.json`` (atomic, under the lock)."""
    with table_lock(folder):
        merged = {**read_jobs(folder), **jobs}
        text = json.dumps(merged, indent=1, sort_keys=True)
        atomic_write(folder / JOBS_NAME, lambda f: f.write(text.encode("utf-8")))


def collect_result(table: Table, options: RunnerOptions) -> TableResult:
    """The table so far, from the run folders: finished runs with their records, and runs whose
    last attempt failed (``launch.json``) with its reason."""
    runs = plan_runs(table, options)
    result = TableResult(table, runs)
    for run in runs:
        key = (run.config.name, run.seed)
        state = run_state(run)  # the provenance classifier
        if state.state in (FINISHED, STALE) or not state.readable:
            result.outcomes[key] = held_outcome(run, state)
            continue
        failure = launch_failure(run.run_dir)
        if failure is not None:
            result.outcomes[key] = Outcome(FAILED, error=failure)
    return result


def rewrite_table(table: Table, options: RunnerOptions) -> TableResult:
    """Rewrite ``TABLE.md`` from the run folders, serialised with every other writer; the
    table as written."""
    folder = table_dir(table, options)
    with table_lock(folder):
        result = collect_result(table, options)
        write_table(result, options, folder / "TABLE.md")
    return result


def run_status(run: PlannedRun, options: RunnerOptions, jobs: dict[str, str],
               live: dict[str, str] | None) -> tuple[str, str]:
    """One run's state and a detail (job id, holder, reason).

    Args:
        run: the planned run.
        options: the runner's options.
        jobs: run folder -> job id (:func:`read_jobs`).
        live: Slurm's live jobs, id -> state (:func:`.slurm.live_jobs`); None without Slurm.

    Returns:
        (one of :data:`STATES`, detail).
    """
    state = run_state(run)  # the provenance classifier
    if state.state == FINISHED:
        return FINISHED, ""
    holder = read_holder(run.run_dir)
    job = jobs.get(_key(run, options))
    if job is not None and live is not None and job in live:
        return (QUEUED if live[job] == "PENDING" else RUNNING), f"Slurm job {job}"
    if holder is not None and holder_alive(holder, None if live is None else live.keys):
        return RUNNING, holder.describe()
    failure = launch_failure(run.run_dir)
    if failure is not None:
        return FAILED, failure
    if state.state in (STALE, FAILED):
        return state.state, state.detail
    if state.state == PARTIAL or lock_path(run.run_dir).exists() or job:
        why = f"Slurm job {job} is gone" if job else "nobody is training it"
        return PARTIAL, f"{why}; the next launch resumes it"
    return MISSING, ""


def status_lines(table: Table, options: RunnerOptions) -> list[str]:
    """``--status``: one line per run and a count per state."""
    runs = plan_runs(table, options)
    jobs = read_jobs(table_dir(table, options))
    live = live_jobs()
    counts = dict.fromkeys(STATES, 0)
    lines = []
    for run in runs:
        state, detail = run_status(run, options, jobs, live)
        counts[state] += 1
        lines.append(f"{state:8s} {run.config.name} seed {run.seed}  {run.run_dir}"
                     + (f"  ({detail})" if detail else ""))
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    where = "" if live is not None else " (no Slurm queue answers here: from the folders only)"
    lines.append(f"{len(runs)} runs: {summary}{where}")
    return lines


__all__ = ["JOBS_NAME", "LAUNCH_NAME", "STATES", "collect_result",
           "launch_failure", "read_jobs", "read_launch", "record_jobs", "rewrite_table",
           "run_status", "status_lines", "table_lock", "write_launch"]
