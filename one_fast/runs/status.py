"""What state a run folder is in, measured against the config it is meant to hold.

:func:`classify_run` is the one judgement of "finished" that the table runner (and any status
report of a table) uses: from the folder's checkpoint (how far it got), its ``run.json`` (where
it came from) and its ``metrics.jsonl`` (what it measured), compared with the plan's resolved
config on every field but :data:`~one_fast.config.INCIDENTAL_FIELDS`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import INCIDENTAL_FIELDS, TrainConfig, config_differences, describe_differences
from ..engine.checkpoint import CHECKPOINT_NAME, CheckpointError, checkpoint_progress
from ..engine.metrics import read_metrics
from .folder import run_files
from .provenance import FAILED as FAILED_STATUS
from .provenance import PROVENANCE_NAME, ProvenanceError, read_provenance

MISSING, PARTIAL, FINISHED, STALE, FAILED = "missing", "partial", "finished", "stale", "failed"


@dataclass(frozen=True)
class RunState:
    """A run folder's state.

    Attributes:
        state: one of

            * ``"missing"``: no run there yet;
            * ``"partial"``: a run of the planned config that has not finished (``epoch`` is
              its checkpoint's; 0 without one, when it starts afresh);
            * ``"finished"``: the planned config's run, all its epochs done, its metrics ending
              with the last epoch's test accuracy (``record``);
            * ``"stale"``: a run of another config (``detail`` names the differing flags), or
              one without provenance: never counted, never continued;
            * ``"failed"``: its last attempt failed (``detail`` says how; ``readable``), or a
              file of it cannot be read (``readable`` False): not counted.
        detail: one line saying why.
        epoch: the epochs its checkpoint holds (0: none).
        record: a finished run's last metrics record.
        provenance: its ``run.json`` content, when readable.
        readable: every file of it that was read could be read.
    """

    state: str
    detail: str
    epoch: int = 0
    record: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    readable: bool = True

    @property
    def resumable(self) -> bool:
        """It holds a checkpoint of the planned config to continue from."""
        return self.state in (PARTIAL, FAILED) and self.readable and self.epoch > 0


def _last_failure(provenance: dict[str, Any] | None) -> str:
    if provenance and provenance.get("status") == FAILED_STATUS:
        return str(provenance.get("error") or "it stopped with an error")
    return ""


def classify_run(run_dir: str | os.PathLike, planned: TrainConfig) -> RunState:
    """Classify ``run_dir`` as missing, partial, finished, stale or failed for ``planned``.

    Args:
        run_dir: the run folder.
        planned: the config the folder is meant to hold (the plan's resolved config).

    Returns:
        The folder's :class:`RunState`; reads files only, changes nothing.
    """
    folder = Path(run_dir)
    if not folder.is_dir() or not run_files(folder):
        return RunState(MISSING, "not started")
    try:
        provenance = read_provenance(folder)
        unreadable = ""
    except ProvenanceError as err:
        provenance, unreadable = None, str(err)
    if not (folder / CHECKPOINT_NAME).is_file():
        failure = _last_failure(provenance)
        if failure:
            return RunState(FAILED, f"failed before its first checkpoint: {failure}",
                            provenance=provenance)
        return RunState(PARTIAL, "no epoch finished yet (no checkpoint): it starts afresh",
                        provenance=provenance)
    try:
        epoch, stored = checkpoint_progress(folder)
    except CheckpointError as err:
        return RunState(FAILED, str(err), provenance=provenance, readable=False)
    differences = config_differences(stored, planned, ignore=INCIDENTAL_FIELDS)
    if differences:
        return RunState(STALE, f"trained with {describe_differences(differences, 'plan')}",
                        epoch, provenance=provenance)
    if unreadable:
        return RunState(FAILED, f"{unreadable}: not counted as finished", epoch,
                        readable=False)
    if provenance is None:
        return RunState(STALE, f"no {PROVENANCE_NAME} (trained before provenance was "
                               "recorded): where it came from is unknown", epoch)
    if epoch < planned.epochs:
        failure = _last_failure(provenance)
        if failure:
            return RunState(FAILED, f"failed after epoch {epoch} of {planned.epochs}: "
                                    f"{failure}", epoch, provenance=provenance)
        return RunState(PARTIAL, f"epoch {epoch} of {planned.epochs} saved", epoch,
                        provenance=provenance)
    try:
        records = read_metrics(folder)
    except (OSError, ValueError) as err:
        return RunState(FAILED, f"{err}", epoch, provenance=provenance, readable=False)
    last = next((r for r in reversed(records) if "epoch" in r), None)
    if last is None or last["epoch"] != epoch or not isinstance(last.get("test_acc"), dict):
        return RunState(FAILED, f"its checkpoint holds epoch {epoch} but metrics.jsonl does "
                                "not end with that epoch's test accuracy", epoch,
                        provenance=provenance, readable=False)
    return RunState(FINISHED, f"all {epoch} epochs", epoch, last, provenance)


__all__ = ["FAILED", "FINISHED", "MISSING", "PARTIAL", "STALE", "RunState", "classify_run"]
