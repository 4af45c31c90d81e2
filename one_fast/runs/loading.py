"""Load a finished (or interrupted) training run: its config, network, method and data.

The commands after training (evaluate, export, predict) all start here, so a run folder is
read one way only: the checkpoint's stored config is turned back into the trainer's config and
the network and method are built by the trainer's own ``build_model`` / ``build_method``
(:mod:`one_fast.runs.assembly`) before the weights are loaded.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import TrainConfig, config_from_dict
from ..data import ImageDataset
from ..deploy.inputs import InputSpec, input_spec, read_input_spec
from ..engine.checkpoint import CheckpointError, load_checkpoint
from ..methods import Method
from ..models import BranchedNetwork
from .assembly import build_method, build_model, run_dataset


@dataclass
class LoadedRun:
    """A training run brought back into memory.

    Attributes:
        run_dir: the run folder.
        config: the run's training config (``data_dir`` replaced when asked).
        model: the whole multi-branch network with the checkpoint's weights, in eval mode (for
            kd runs the student alone, without its teacher).
        method: the training method (defines the ensemble: gated for ONE, averaged
            probabilities for dml / ensemble).
        epoch: epochs completed when the checkpoint was saved.
        inputs: what the network expects as input (image size, mean, std, class names).
        dataset: the training dataset, or None when not loaded.
    """

    run_dir: Path
    config: TrainConfig
    model: BranchedNetwork
    method: Method
    epoch: int
    inputs: InputSpec
    dataset: ImageDataset | None

    @property
    def num_branches(self) -> int:
        """m, the number of branches (members) of the network."""
        return self.model.num_branches


def load_run(run_dir: str | os.PathLike, device: torch.device | str = "cpu", *,
             data_dir: str | os.PathLike | None = None, load_data: bool = True) -> LoadedRun:
    """Load ``run_dir/checkpoint.pt`` and rebuild the run's network around it.

    Args:
        run_dir: a run folder written by ``python -m one_fast.train``.
        device: where to put the network.
        data_dir: where the dataset is now (default: the run's ``--data-dir``).
        load_data: load the dataset (needed to evaluate). Without it the run's
            ``inputs.json`` must describe the inputs; if it has none the dataset is loaded
            anyway.

    Returns:
        A :class:`LoadedRun` with the network in eval mode on ``device``.

    Raises:
        FileNotFoundError: ``run_dir`` has no checkpoint.
        CheckpointError: the checkpoint is unreadable, has no config, or its weights do not fit
            the network its config describes.
        DatasetNotFoundError: the dataset is needed but not in ``data_dir``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    state = load_checkpoint(run_dir, map_location="cpu")
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise CheckpointError(f"checkpoint in {run_dir} lacks its config or model weights")
    config = config_from_dict(state["config"])
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=str(data_dir))

    inputs = None if load_data else read_input_spec(run_dir)
    dataset = None
    if inputs is None:
        dataset = run_dataset(config)
        inputs = read_input_spec(run_dir) or input_spec(dataset, config.data_dir)

    model = build_model(config, inputs.num_classes)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"the weights in {run_dir} do not fit the network its config "
                              f"describes: {err}") from err
    model.to(device).eval()
    return LoadedRun(run_dir=run_dir, config=config, model=model, method=build_method(config),
                     epoch=int(state.get("epoch", 0)), inputs=inputs, dataset=dataset)
