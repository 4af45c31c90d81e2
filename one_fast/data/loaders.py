"""``build_loaders``: a dataset by name -> (train loader, test loader, what the trainer needs).

One entry point for the trainer over both kinds of input pipeline, which share the loader
interface (``epoch_batches(epoch)``, ``eval_batches()``, ``steps_per_epoch``):

* the in-memory datasets (digits, CIFAR, SVHN, synthetic): :func:`load_dataset` then
  :func:`loaders_for` (uint8 split on the device, batches augmented there);
* ImageNet: :func:`find_imagenet` then :func:`imagenet_loaders` (JPEGs decoded by NVIDIA DALI,
  on the GPU with CUDA, in DALI's CPU mode otherwise). Its loaders also keep ``stats``
  (:class:`~one_fast.data.imagenet.InputStats`) of their last pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import load_dataset
from .device import DeviceLoader, loaders_for
from .imagenet import ImageNetLoader, find_imagenet, imagenet_loaders

IMAGENET_IMAGE_SIZE = 224  # the published networks' input, used when no size is asked for

Loader = DeviceLoader | ImageNetLoader


@dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about the dataset behind a pair of loaders.

    Attributes:
        name: the dataset's name.
        num_train, num_test: images in the whole training / test split (all ranks together).
        num_classes: classifier outputs.
        image_size: height = width of the batches.
        class_names: one name per class where the data name them (ImageNet: the devkit's
            words, else the wnids), None for the in-memory datasets (deploy knows theirs).
    """

    name: str
    num_train: int
    num_test: int
    num_classes: int
    image_size: int
    class_names: tuple[str, ...] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image in a batch."""
        return (3, self.image_size, self.image_size)


def build_loaders(dataset: str, batch_size: int, *, device: torch.device | str, seed: int,
                  data_dir: str | Path = "data", download: bool = False,
                  synthetic_classes: int = 100, svhn_extra: bool = False,
                  image_size: int | None = None,
                  rank: int = 0, world_size: int = 1, channels_last: bool = False,
                  data_threads: int | None = None, prefetch: int = 3,
                  dtype: torch.dtype = torch.float32) -> tuple[Loader, Loader, DatasetInfo]:
    """Load or locate ``dataset`` and make its training and (rank-sharded) test loaders.

    Each rank trains on its own equal-sized shard of the training set and evaluates its share
    of the test set (the shares cover it exactly once; sum the counts across ranks).

    Args:
        dataset: "imagenet" or a name :func:`load_dataset` takes.
        batch_size: training images per step on this rank (also the evaluation batch).
        device: where batches are produced.
        seed: run seed: shards, epoch orders and augmentation derive from it.
        data_dir: the dataset's folder (ImageNet: DIR holding train/<wnid>/ and val/<wnid>/).
        download: fetch a missing CIFAR / SVHN archive (ImageNet cannot be downloaded).
        synthetic_classes: classes of the synthetic dataset.
        svhn_extra: add SVHN's extra split to its training split.
        image_size: ImageNet crop size (default 224) or the synthetic images' size (default
            32); the other datasets have a fixed size, which this must equal if given.
        rank, world_size: this process's place in data-parallel training.
        channels_last: batches in channels_last memory format.
        data_threads: ImageNet: DALI's CPU threads per process (default: this process's CPUs
            divided among the ranks on the node). Ignored by in-memory datasets.
        prefetch: ImageNet: batches DALI prepares ahead of the step. Ignored by in-memory
            datasets.
        dtype: ImageNet: the batches' floating dtype -- the step's (bfloat16 under bf16
            autocast: the first convolution would cast to it anyway, and the step's static
            input buffer is half the size; DALI still hands over float32, cast on the
            device after the copy). Ignored by in-memory datasets (uint8 on the device, augmented
            there).

    Returns:
        (train_loader, test_loader, info).

    Raises:
        ValueError: ``--batch-size`` larger than a rank's shard, or an ``--image-size`` the
            dataset cannot have (the message names the flag).
        DatasetNotFoundError: the data are missing (the message says how to get them).
        DaliNotInstalledError: ImageNet without NVIDIA DALI (the message gives the install
            command).
    """
    if dataset == "imagenet":
        size = image_size or IMAGENET_IMAGE_SIZE
        layout = find_imagenet(data_dir)
        _check_batch_size(batch_size, len(layout.train), world_size)
        train, test = imagenet_loaders(
            layout, batch_size, device=device, seed=seed, image_size=size, rank=rank,
            world_size=world_size, shard_eval=True, num_threads=data_threads,
            prefetch=prefetch, channels_last=channels_last, dtype=dtype)
        info = DatasetInfo(dataset, len(layout.train), len(layout.val), layout.num_classes, size,
                           class_names=layout.class_names)
        return train, test, info
    data = load_dataset(dataset, data_dir, download, synthetic_classes=synthetic_classes,
                        svhn_extra=svhn_extra,
                        **({"synthetic_image_size": image_size}
                           if dataset == "synthetic" and image_size else {}))
    height = data.image_shape[1]
    if image_size is not None and image_size != height:
        raise ValueError(f"--image-size {image_size}: --dataset {dataset} has "
                         f"{height}x{height} images (not resized; leave --image-size out)")
    _check_batch_size(batch_size, len(data.train_labels), world_size)
    train, test = loaders_for(data, batch_size, device=device, seed=seed, rank=rank,
                              world_size=world_size, shard_eval=True,
                              channels_last=channels_last)
    info = DatasetInfo(dataset, len(data.train_labels), len(data.test_labels), data.num_classes,
                       height)
    return train, test, info


def _check_batch_size(batch_size: int, num_train: int, world_size: int) -> None:
    shard = num_train // world_size
    if batch_size > shard:
        raise ValueError(f"--batch-size {batch_size} is larger than the training set "
                         f"({shard} images per process): no full batch could be made")


__all__ = ["IMAGENET_IMAGE_SIZE", "DatasetInfo", "Loader", "build_loaders"]
