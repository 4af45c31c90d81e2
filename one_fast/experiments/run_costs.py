"""A configuration's training and test cost, counted on its real network (one_fast.costs)."""

from __future__ import annotations

import functools

from ..costs import Costs, model_costs
from ..models import create_model
from .tables import BACKBONES, Configuration

# (classes, image shape) the trainer's datasets feed the network; digits are enlarged to 16x16
# (see one_fast/data/digits.py).
DATASET_SHAPES = {
    "digits": (10, (3, 16, 16)),
    "cifar10": (10, (3, 32, 32)),
    "cifar100": (100, (3, 32, 32)),
    "svhn": (10, (3, 32, 32)),
    "synthetic": (100, (3, 32, 32)),
}


@functools.cache  # counted once per configuration per process
def configuration_costs(config: Configuration) -> Costs:
    """FLOPs (2 x multiply-adds) and parameters of ``config``'s network, counted by
    :func:`one_fast.costs.model_costs` on the meta device.

    Raises:
        ValueError: a dataset whose input shape is not known here.
    """
    if config.dataset not in DATASET_SHAPES:
        raise ValueError(f"no input shape known for dataset {config.dataset!r}")
    classes, shape = DATASET_SHAPES[config.dataset]
    backbone = BACKBONES[config.backbone]

    def build(m: int):
        return create_model("resnet", num_classes=classes, num_branches=m,
                            depth=backbone["depth"], block=backbone["block"],
                            shared_stages=config.shared_stages, gate=config.gate,
                            share_stem=config.share_stem)

    return model_costs(build, config.num_branches, shape)


__all__ = ["DATASET_SHAPES", "configuration_costs"]
