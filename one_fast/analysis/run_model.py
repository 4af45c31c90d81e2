"""A trained run brought back for analysis: its network, test data and own test error.

The one place the analysis reads a run folder (to be replaced by ``engine.runs.load_run`` when
that is available): the checkpoint's config rebuilds the network with the trainer's own
builder, the weights are loaded, and the test split is batched exactly as the trainer evaluated
it (same batch size, normalisation, precision), so an unperturbed network reproduces the run's
own test accuracy.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig, config_from_dict
from ..data import load_dataset
from ..data.device import DeviceLoader, loaders_for
from ..engine.checkpoint import CheckpointError, load_checkpoint
from ..engine.metrics import read_metrics
from ..engine.model_setup import build_model, image_size


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
    test_loader: DeviceLoader
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
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"RUN_DIR {run_dir}: no such folder")
    device = torch.device(device)
    state = load_checkpoint(run_dir, map_location="cpu")
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise CheckpointError(f"the checkpoint in {run_dir} lacks its config or weights")
    config = config_from_dict(state["config"])
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=str(data_dir))
    # The training split's statistics normalise the test images, so load it as trained
    # (SVHN with or without its extra split).
    data = load_dataset(config.dataset, config.data_dir, download=False,
                        synthetic_classes=config.synthetic_classes,
                        svhn_extra=config.svhn_extra, synthetic_image_size=image_size(config))
    model = build_model(config, data.num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"the weights in {run_dir} do not fit the network its config "
                              f"describes: {err}") from err
    model.to(device).eval()
    cuda = device.type == "cuda"
    amp = config.amp if config.amp is not None else ("bf16" if cuda else "none")
    _, test_loader = loaders_for(data, config.batch_size, device=device, seed=config.seed,
                                 augment=False)
    epoch = int(state["epoch"])
    return AnalysedRun(run_dir, config, epoch, model, test_loader,
                       torch.bfloat16 if amp == "bf16" else None,
                       _logged_test_acc(run_dir, epoch))


__all__ = ["AnalysedRun", "load_analysed_run"]
