"""Before the first step and after the last: what a run continues, its folder, its provenance.

:func:`begin_run` decides what this invocation continues (a ``--resume``, or after a torchrun
restart the run folder's own checkpoint), refuses a resume that would change the run's
settings, prepares the folder (taking the history along when a run continues in another
folder) and writes ``run.json``; :func:`end_run` records how the invocation ended. Every rank
calls both; rank 0 alone writes, and a problem it finds stops every rank with the same message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TrainConfig, run_dir_of
from ..engine import distributed
from ..engine.checkpoint import CHECKPOINT_NAME, CheckpointError, checkpoint_progress
from ..engine.metrics import read_metrics, trim_metrics
from . import provenance
from .folder import RunFolderError, prepare_run_folder
from .resume import check_resumable


@dataclass
class RunStart:
    """What :func:`begin_run` settled.

    Attributes:
        config: the config to train with (``resume`` set when a torchrun restart continues).
        from_epoch: epochs already trained (the resumed checkpoint's).
        record: when a restarted run had already finished, its last metrics record (nothing
            is left to train); else None.
        provenance: the ``run.json`` content rank 0 wrote (None on other ranks).
    """

    config: TrainConfig
    from_epoch: int
    record: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None


def _say(dist: distributed.DistInfo, message: str) -> None:
    if dist.is_main:
        print(message, flush=True)


def continue_after_restart(config: TrainConfig, restart: int) -> TrainConfig:
    """The config of a worker group torchrun restarted: it continues from the run folder's own
    checkpoint, if one was saved, instead of starting again (``--overwrite`` no longer
    applies: the first start already replaced the old run)."""
    if restart and (Path(config.out_dir) / CHECKPOINT_NAME).is_file():
        return dataclasses.replace(config, resume=config.out_dir, overwrite=False)
    return config


def _resumed_epoch(config: TrainConfig, restarted: bool) -> int:
    """The resumed checkpoint's epoch, after checking that it continues this config."""
    if not config.resume:
        return 0
    epoch, stored = checkpoint_progress(config.resume)
    if not stored:
        raise CheckpointError(f"checkpoint {config.resume} has no config to check the run "
                              "against")
    check_resumable(stored, config, config.resume)
    if epoch >= config.epochs and not restarted:
        raise ValueError(
            f"--resume {config.resume}: that run already finished {epoch} epochs "
            f"(--epochs {config.epochs}); give --epochs N with N > {epoch} to train it longer")
    return epoch


def _prepare_folder(config: TrainConfig, from_epoch: int, notes: list[str] | tuple[str, ...]
                    ) -> str | None:
    """Rank 0's part: the folder ready, the history in place; an error message or None."""
    try:
        folder = prepare_run_folder(config.out_dir, resume=config.resume,
                                    overwrite=config.overwrite,
                                    say=lambda line: print(line, flush=True))
        if config.resume:
            source = Path(run_dir_of(config.resume))
            # The resumed run's metrics end at its checkpoint (a record logged after it, or a
            # half-written line, is dropped); in another folder they are copied there first.
            trim_metrics(source, from_epoch,
                         into=None if source.resolve() == folder.resolve() else folder)
    except (RunFolderError, ValueError, OSError) as err:
        return f"{err}"
    for note in notes:
        print(note, flush=True)
    return None


def begin_run(config: TrainConfig, dist: distributed.DistInfo,
              notes: list[str] | tuple[str, ...] = ()) -> RunStart:
    """Settle what this invocation trains and record its start (see the module docstring).

    Raises:
        ResumeMismatchError: the resumed run was trained with other settings.
        RunFolderError: the folder cannot be used (the same message on every rank).
        ValueError: the resumed run has finished already.
    """
    restart = distributed.elastic_restart_count()
    config = continue_after_restart(config, restart)
    if restart:
        _say(dist, f"torchrun restarted the workers (restart {restart}): "
                   + (f"continuing from {Path(config.out_dir) / CHECKPOINT_NAME}"
                      if config.resume == config.out_dir else "no checkpoint was saved, "
                      "starting again"))
    from_epoch = _resumed_epoch(config, bool(restart))
    if from_epoch >= config.epochs:  # a restart after the last checkpoint: nothing to train
        _say(dist, f"the run had finished all {config.epochs} epochs before the restart")
        if dist.is_main:
            _record_finish_after_restart(config.out_dir, from_epoch)
        records = [r for r in read_metrics(config.out_dir) if r.get("epoch") == from_epoch]
        return RunStart(config, from_epoch, record=records[-1] if records else {})
    problem = _prepare_folder(config, from_epoch, notes) if dist.is_main else None
    problem = distributed.broadcast_object(problem)
    if problem:
        raise RunFolderError(problem)
    devices = distributed.gather_objects(provenance.device_name(dist.device))
    written = None
    if dist.is_main:
        history = run_dir_of(config.resume) if config.resume else None
        written, note = provenance.start_provenance(
            config.out_dir, config, from_epoch=from_epoch, world_size=dist.world_size,
            devices=devices, history=history, elastic_restart=restart)
        if note:
            print(note, flush=True)
    return RunStart(config, from_epoch, provenance=written)


def _record_finish_after_restart(run_dir: str, epochs: int) -> None:
    """The worker group died after the last checkpoint, maybe before run.json said so."""
    try:
        data = provenance.read_provenance(run_dir)
        if data is not None and data.get("status") != provenance.FINISHED:
            provenance.finish_provenance(run_dir, data, provenance.FINISHED, epochs)
    except (provenance.ProvenanceError, OSError) as err:
        print(f"warning: {err}", flush=True)


def end_run(start: RunStart, dist: distributed.DistInfo, status: str, error: str = "") -> None:
    """Record in ``run.json`` how this invocation ended (rank 0; a failed write is one line);
    ``error`` is kept to its first line."""
    if not dist.is_main or start.provenance is None:
        return
    error = (error.splitlines() or [""])[0][:300]
    try:
        epochs, _ = checkpoint_progress(start.config.out_dir)
    except (FileNotFoundError, CheckpointError):
        epochs = 0
    try:
        provenance.finish_provenance(start.config.out_dir, start.provenance, status, epochs,
                                     error)
    except OSError as err:
        print(f"warning: could not record the end of the run in {start.config.out_dir}/"
              f"{provenance.PROVENANCE_NAME} ({err.strerror or err})", flush=True)


__all__ = ["RunStart", "begin_run", "continue_after_restart", "end_run"]
