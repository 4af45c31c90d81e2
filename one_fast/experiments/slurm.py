"""What the Slurm launcher needs from the machine: submitit, ``sbatch``, the queue.

Everything here fails with one line saying what is missing and how to get it; nothing here
submits (that is :mod:`.slurm_launcher`).
"""

from __future__ import annotations

import re
import shutil
import subprocess

# Slurm job states in which a job may still run (or is running): its runs are not stale.
LIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED",
                         "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING",
                         "STAGE_OUT"})


class SlurmError(RuntimeError):
    """Slurm or submitit is missing, or Slurm refused a submission (one line, Slurm's words)."""


def require_submitit():
    """The submitit module.

    Raises:
        SlurmError: submitit is not installed (says how to install it).
    """
    try:
        import submitit
    except ImportError as err:
        raise SlurmError("--launcher slurm needs submitit: pip install 'one_fast[cluster]' "
                         "(or pip install submitit)") from err
    return submitit


def require_sbatch() -> str:
    """The path of ``sbatch``.

    Raises:
        SlurmError: Slurm was not found on PATH.
    """
    path = shutil.which("sbatch")
    if path is None:
        raise SlurmError("--launcher slurm: Slurm was not found (no sbatch on PATH); run this "
                         "on a Slurm login node, or use --launcher local")
    return path


def live_jobs() -> dict[str, str] | None:
    """Slurm's jobs that may still run, id -> state (array tasks as ``"123_4"``); None when
    Slurm is not available here (no squeue, or it fails)."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] in LIVE_STATES:
            jobs[parts[0]] = parts[1]
    return jobs


def slurm_message(err: BaseException) -> str:
    """Slurm's own words in a failed submission's error, on one line: its ``sbatch: error:``
    lines joined by "; " (else the error's last non-empty line)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    prefix = "sbatch: error: "
    errors = [ln[ln.index(prefix) + len(prefix):] for ln in lines if prefix in ln]
    if errors:
        return prefix + "; ".join(dict.fromkeys(errors))
    return lines[-1] if lines else type(err).__name__


def parse_time(text: str) -> int:
    """Minutes of a ``--slurm-time``: ``MIN``, ``H:MM:SS``, ``MM:SS`` or ``D-HH[:MM[:SS]]``
    (Slurm's forms), rounded up to whole minutes.

    Raises:
        ValueError: not one of those forms, or not positive (naming --slurm-time).
    """
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if match is None:
        raise ValueError(f"--slurm-time: expected minutes, H:MM:SS or D-HH:MM:SS, got {text!r}")
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:
        seconds = a * 60
    if seconds <= 0:
        raise ValueError(f"--slurm-time must be positive, got {text!r}")
    return -(-seconds // 60)


__all__ = ["LIVE_STATES", "SlurmError", "live_jobs", "parse_time", "require_sbatch",
           "require_submitit", "slurm_message"]
