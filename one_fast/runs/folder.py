"""One run per folder: refuse to mix runs, clear a folder atomically, check it is writable.

A run folder holds exactly the files one training run writes (:data:`RUN_FILES`). Starting a
new run in a folder that holds another's would overwrite its checkpoint, append to its metrics
and plot the two as one, so :func:`prepare_run_folder` refuses unless the caller resumes that run
or asks to replace it. A folder without a checkpoint is not a run yet (it died before its first
epoch finished): starting a run there replaces its files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..deploy.inputs import INPUTS_NAME
from ..engine.checkpoint import CHECKPOINT_NAME, CheckpointError, checkpoint_progress
from ..engine.metrics import METRICS_NAME
from .provenance import PROVENANCE_NAME

# What a run writes into its folder (temp files of atomic writes start with ".<name>.").
RUN_FILES = (CHECKPOINT_NAME, "checkpoint.json", METRICS_NAME, "curves.png", "tensorboard",
             INPUTS_NAME, PROVENANCE_NAME,
             "launch.json")  # launch.json: the experiment launcher's record


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (the message says why and what to do)."""


def run_files(folder: Path) -> list[str]:
    """Names of the run files present in ``folder``."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or any(name.startswith(f".{run}.") for run in RUN_FILES)


def describe_run(folder: Path) -> str:
    """A few words on the run in ``folder``, from its checkpoint when there is one."""
    try:
        epoch, config = checkpoint_progress(folder)
    except (FileNotFoundError, CheckpointError):
        return ", ".join(run_files(folder))
    epochs = config.get("epochs")
    return f"checkpoint after epoch {epoch}" + (f" of {epochs}" if epochs else "")


def clear_run_folder(folder: Path, reason: str = "--overwrite") -> None:
    """Delete the run in ``folder``: rename the folder aside, then delete that copy.

    The rename is atomic, so an interruption leaves either the whole old run in ``folder`` or
    none of it (at worst a hidden ``.<name>.replaced-*`` sibling to delete by hand), never a mix
    of old and new files. The folder is recreated empty.

    Args:
        folder: the run folder.
        reason: why it is cleared, for the error message (a flag, or a phrase).

    Raises:
        RunFolderError: ``folder`` holds files a run does not write (never deleted).
    """
    foreign = sorted(p.name for p in folder.iterdir() if not _is_run_file(p.name))
    if foreign:
        raise RunFolderError(
            f"{reason}: {folder} also holds files that are not a run's "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); refusing to "
            "delete them: choose another --out-dir, or move them away")
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.replaced-", dir=folder.parent))
    os.replace(folder, aside / folder.name)
    folder.mkdir()
    shutil.rmtree(aside)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise RunFolderError(f"--out-dir {folder}: cannot write there ({reason}); choose a "
                             "folder you can write to") from err


def prepare_run_folder(out_dir: str | os.PathLike, *, resume: str | None,
                       overwrite: bool, say: Callable[[str], None] | None = None) -> Path:
    """Check (and with ``overwrite`` clear) the folder a run is about to write.

    Args:
        out_dir: the run folder (``--out-dir``).
        resume: the folder or checkpoint being resumed (``--resume``), if any.
        overwrite: replace a run already in ``out_dir`` (``--overwrite``).
        say: where the note goes when a folder without a checkpoint is replaced.

    Returns:
        The folder, created if missing.

    Raises:
        RunFolderError: ``out_dir`` is a file, is not writable, or holds another run and neither
            ``resume`` (of that run) nor ``overwrite`` was given.
    """
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--out-dir {folder} is a file, not a folder; choose a folder")
    if folder.is_dir() and run_files(folder):
        resumed = Path(resume) if resume else None
        if resumed is not None and resumed.suffix == ".pt":
            resumed = resumed.parent
        continuing = resumed is not None and resumed.resolve() == folder.resolve()
        if continuing and overwrite:
            raise RunFolderError(f"--overwrite would delete the run --resume {resume} continues; "
                                 "drop one of the two")
        if not continuing and not overwrite and not (folder / CHECKPOINT_NAME).exists():
            # Not a run yet: nothing of it can be continued.
            clear_run_folder(folder, f"--out-dir {folder} holds no checkpoint to continue, so "
                                     "its run starts afresh")
            if say is not None:
                say(f"{folder} held no checkpoint (no epoch of its run had finished): "
                    "starting the run there afresh")
        elif not continuing:
            if not overwrite:
                raise RunFolderError(
                    f"--out-dir {folder} already holds a run ({describe_run(folder)}): continue "
                    f"it with --resume {folder}, replace it with --overwrite, or choose another "
                    "--out-dir")
            clear_run_folder(folder)
    _check_writable(folder)
    return folder


__all__ = ["RUN_FILES", "RunFolderError", "clear_run_folder", "describe_run",
           "prepare_run_folder", "run_files"]
