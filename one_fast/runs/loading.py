"""Load a finished (or interrupted) training run: its config, network, method and data.

The commands after training (evaluate, export, predict, analyze) all start here, so a run
folder is read one way only: the checkpoint's stored config is turned back into the trainer's
config and the network and method are built by the trainer's own ``build_model`` /
``build_method`` (:mod:`one_fast.runs.assembly`) before the weights are loaded.
:func:`eval_loader` then batches a split as the trainer evaluated it: the in-memory datasets
from the loaded data, ImageNet through its DALI validation pipeline, read from the folder.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import TrainConfig, config_from_dict
from ..data import DeviceLoader, ImageDataset
from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetLoader, find_imagenet
from ..data.loaders import Loader
from ..deploy.inputs import InputSpec, input_spec, read_input_spec
from ..engine.checkpoint import CheckpointError, load_checkpoint
from ..methods import Method
from ..models import BranchedNetwork
from .assembly import build_method, build_model, image_size, run_dataset

IMAGENET = "imagenet"  # read from its folder by DALI, never loaded into memory


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
        dataset: the training dataset, or None when not loaded (ImageNet never is: its
            images are read from ``config.data_dir`` by :func:`eval_loader`).
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
            anyway. An ImageNet run is never loaded into memory: its ``inputs.json`` (or, for
            a run without one, the folder's class list) describes its inputs.

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

    imagenet = config.dataset == IMAGENET
    inputs = read_input_spec(run_dir) if imagenet or not load_data else None
    dataset = None
    if inputs is None and imagenet:
        inputs = _imagenet_input_spec(config)
    elif inputs is None:
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


def _imagenet_input_spec(config: TrainConfig) -> InputSpec:
    """The inputs of an ImageNet run without ``inputs.json``: its crop size, ImageNet's
    statistics and the class folders of ``config.data_dir`` (DatasetNotFoundError if absent)."""
    layout = find_imagenet(config.data_dir)
    size = image_size(config)
    return InputSpec(dataset=IMAGENET, num_classes=layout.num_classes, channels=3,
                     height=size, width=size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     class_names=layout.class_names)


def eval_loader(run: LoadedRun, split: str = "test", batch_size: int | None = None,
                device: torch.device | str = "cpu") -> Loader:
    """A split of the run's data batched as the trainer evaluated it: unaugmented (ImageNet:
    resize and centre crop), in order, every image once; iterate ``eval_batches()``.

    Args:
        run: a loaded run (with its dataset, unless it is an ImageNet run).
        split: "test" (ImageNet: val/) or "train" (unaugmented).
        batch_size: images per batch (default: the run's --batch-size).
        device: where batches are produced (ImageNet: DALI decodes on CUDA devices).

    Raises:
        ValueError: an unknown split, a batch size below 1, or a run loaded without its data.
        DatasetNotFoundError: ImageNet's folder is not at the run's (or the given) --data-dir.
        DaliNotInstalledError: ImageNet without NVIDIA DALI.
    """
    if split not in ("test", "train"):
        raise ValueError(f"--split must be test or train, got {split!r}")
    batch_size = batch_size or run.config.batch_size
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if run.config.dataset == IMAGENET:
        layout = find_imagenet(run.config.data_dir)
        return ImageNetLoader(layout.val if split == "test" else layout.train, batch_size,
                              device=device, seed=run.config.seed, augment=False,
                              drop_last=False, image_size=run.inputs.height,
                              mean=run.inputs.mean, std=run.inputs.std)
    data = run.dataset
    if data is None:
        raise ValueError(f"{run.run_dir} was loaded without its dataset (load_data=False)")
    images, labels = ((data.test_images, data.test_labels) if split == "test"
                      else (data.train_images, data.train_labels))
    return DeviceLoader(images, labels, batch_size, device=device, mean=data.mean, std=data.std,
                        augment=False, pad=0, flip=False, seed=run.config.seed, drop_last=False)
