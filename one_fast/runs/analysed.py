"""A trained run brought back for analysis: its network, test data and own test error.

The run is read by :func:`one_fast.runs.loading.load_run` (the one way a run folder is read);
its test split is then batched exactly as the trainer evaluated it (same batch size,
normalisation, precision), so an unperturbed network reproduces the run's own test accuracy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..data.loaders import Loader
from ..engine.metrics import read_metrics
from .assembly import autocast_dtype
from .loading import eval_loader, load_run


@dataclass
class AnalysedRun:
    """What the analyses need from a run.

    Attributes:
        run_dir: the run folder.
        config: the run's training config.
        epoch: epochs completed when the checkpoint was saved.
        model: the whole network with the checkpoint's weights, in eval mode.
        test_loader: the test split, batched as the trainer evaluated it.
        amp_dtype: the autocast dtype the trainer evaluated in (None: float32).
        test_acc: the run's own test accuracies logged for that epoch (None if not logged).
    """

    run_dir: Path
    config: TrainConfig
    epoch: int
    model: nn.Module
    test_loader: Loader
    amp_dtype: torch.dtype | None
    test_acc: dict[str, float] | None


def _logged_test_acc(run_dir: Path, epoch: int) -> dict[str, float] | None:
    """The test accuracies the trainer logged for ``epoch`` (its last record of that epoch)."""
    try:
        records = read_metrics(run_dir)
    except (OSError, ValueError):
        return None
    found = [r["test_acc"] for r in records
             if r.get("epoch") == epoch and isinstance(r.get("test_acc"), dict)]
    return found[-1] if found else None


def load_analysed_run(run_dir: str | os.PathLike, device: torch.device | str = "cpu", *,
                      data_dir: str | os.PathLike | None = None) -> AnalysedRun:
    """Load ``run_dir``'s checkpoint, network and test split.

    Args:
        run_dir: a folder written by ``python -m one_fast.train``.
        device: where to run the network.
        data_dir: where the dataset is now (default: the run's --data-dir).

    Returns:
        An :class:`AnalysedRun`.

    Raises:
        FileNotFoundError: no run folder or no checkpoint there.
        CheckpointError: the checkpoint lacks its config or its weights do not fit.
        DatasetNotFoundError: the dataset is not in ``data_dir``.
        DaliNotInstalledError: an ImageNet run without NVIDIA DALI.
    """
    device = torch.device(device)
    run = load_run(run_dir, device, data_dir=data_dir)
    # The trainer's own test loader at the run's batch size (normalised with the training
    # split's statistics; ImageNet through its validation pipeline).
    test_loader = eval_loader(run, "test", device=device)
    return AnalysedRun(run.run_dir, run.config, run.epoch, run.model, test_loader,
                       autocast_dtype(run.config, device),
                       _logged_test_acc(run.run_dir, run.epoch))


__all__ = ["AnalysedRun", "load_analysed_run"]
