"""One trainer per run folder: a lock file beside the folder, naming who holds it.

``<run folder>.lock`` (e.g. ``seed0.lock`` beside ``seed0/``) holds JSON: the host, the pid and,
under Slurm, the job id of the process training the run. It lives beside the folder, not in it,
because the trainer refuses to start a run in a folder holding files a run does not write.

A lock is *stale* when its holder is gone: a Slurm job that is no longer queued or running (or
the same job id, restarted by a requeue), or, without a job id, a pid on this host that no
longer exists. A stale lock is taken over; a live one is reported as "running by ...".
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path

# Returns the Slurm job ids queued or running, or None when squeue cannot answer right now.
LiveJobs = Callable[[], Container[str] | None]

LOCK_SUFFIX = ".lock"


def lock_path(run_dir: Path) -> Path:
    """The lock file of a run folder: ``<run_dir>.lock`` beside it."""
    return run_dir.with_name(run_dir.name + LOCK_SUFFIX)


@dataclass(frozen=True)
class Holder:
    """Who trains a run: host, pid and the Slurm job id ("" outside Slurm)."""

    host: str
    pid: int
    job_id: str = ""

    def describe(self) -> str:
        """``"Slurm job 12_3 (pid 77 on node1)"`` or ``"pid 77 on node1"``."""
        where = f"pid {self.pid} on {self.host}"
        return f"Slurm job {self.job_id} ({where})" if self.job_id else where


def this_process() -> Holder:
    """The holder this process would write: its Slurm job id when it runs in a job."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")
    return Holder(socket.gethostname(), os.getpid(), job)


def read_holder(run_dir: Path) -> Holder | None:
    """The holder named in the run's lock file, or None when there is none (or unreadable)."""
    try:
        data = json.loads(lock_path(run_dir).read_text("utf-8"))
        return Holder(str(data["host"]), int(data["pid"]), str(data.get("job_id", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_alive(holder: Holder, live_jobs: LiveJobs | None = None) -> bool:
    """Whether ``holder`` may still be training.

    Args:
        holder: the lock's holder.
        live_jobs: returns the Slurm job ids queued or running (``squeue``), or None when
            squeue cannot answer right now; None itself where Slurm is not available. Without
            an answer a job's lock counts as alive unless its pid on this host is gone: a
            failing squeue must never let a second trainer into a running job's folder.
    """
    me = this_process()
    if holder.job_id:
        if holder.job_id == me.job_id:  # this very job, restarted by a requeue
            return holder.host == me.host and holder.pid != me.pid and _pid_alive(holder.pid)
        live = live_jobs() if live_jobs is not None else None
        if live is not None:
            return holder.job_id in live
    if holder.host == me.host:
        return _pid_alive(holder.pid)
    return True


class RunLocked(RuntimeError):
    """The run is being trained by a live holder (the message names it)."""

    def __init__(self, run_dir: Path, holder: Holder):
        super().__init__(f"{run_dir} is being trained by {holder.describe()}")
        self.holder = holder


class RunLock:
    """The lock of one run folder, used as a context manager around its training.

    Raises (on enter):
        RunLocked: a live holder has it.
    """

    def __init__(self, run_dir: Path, live_jobs: LiveJobs | None = None):
        self.path = lock_path(Path(run_dir))
        self.run_dir = Path(run_dir)
        self.live_jobs = live_jobs
        self.holder = this_process()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"host": self.holder.host, "pid": self.holder.pid,
                       "job_id": self.holder.job_id}, f)
        return True

    def acquire(self) -> None:
        """Take the lock, taking over a stale one.

        The check and the take-over happen under an exclusive ``flock`` of a guard file beside
        the lock, so two processes that both find a lock stale cannot both take it.

        Raises:
            RunLocked: a live holder has it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        guard = self.path.with_name(f".{self.path.name}.guard")
        with open(guard, "a") as g:
            fcntl.flock(g, fcntl.LOCK_EX)
            if self._create():
                return
            holder = read_holder(self.run_dir)
            if holder is not None and holder_alive(holder, self.live_jobs):
                raise RunLocked(self.run_dir, holder)
            self.path.unlink(missing_ok=True)
            if not self._create():
                raise RunLocked(self.run_dir, read_holder(self.run_dir) or Holder("?", 0))

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if read_holder(self.run_dir) == self.holder:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["Holder", "RunLock", "RunLocked", "holder_alive", "lock_path", "read_holder",
           "this_process"]
