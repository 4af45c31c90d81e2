"""ImageNet from an ImageNet-layout folder of JPEGs, decoded by NVIDIA DALI.

    layout = find_imagenet("/data/imagenet")          # DIR/train/<wnid>/, DIR/val/<wnid>/
    train, val = imagenet_loaders(layout, 256, device="cuda", seed=0, channels_last=True)
    for images, labels in train.epoch_batches(epoch): ...
    train.stats.images_per_s, train.stats.wait_fraction

layout.py finds and checks the folder, devkit.py reads the devkit and sorts the validation
images into class folders, pipeline.py builds the DALI graphs, loader.py turns them into batches
with the DeviceLoader interface. DALI is imported only when a loader is made.
"""

from __future__ import annotations

from .devkit import Devkit, ValPreparation, find_devkit, prepare_val_folder, read_devkit
from .layout import ImageNetLayout, ImageSplit, find_imagenet
from .loader import ImageNetLoader, InputStats, find_undecodable, imagenet_loaders
from .pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INSTALL_HINT,
    DaliNotInstalledError,
    dali_available,
    eval_resize,
)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "INSTALL_HINT", "DaliNotInstalledError", "Devkit",
    "ImageNetLayout", "ImageNetLoader", "ImageSplit", "InputStats", "ValPreparation",
    "dali_available", "eval_resize", "find_devkit", "find_imagenet", "find_undecodable",
    "imagenet_loaders", "prepare_val_folder", "read_devkit",
]
