"""Datasets (digits, CIFAR-10/100, SVHN, synthetic) and the device-resident input pipeline.

    dataset = load_dataset("digits")
    train, test = loaders_for(dataset, 128, device="cuda", seed=0)
    for images, labels in train.epoch_batches(epoch): ...
"""

from __future__ import annotations

from pathlib import Path

from .augment import apply_augmentation, augment_batch, draw_augmentation
from .cifar import CIFAR_SPECS, load_cifar
from .dataset import ImageDataset, channel_stats
from .device import DeviceLoader, derive_seed, loaders_for, shard_indices
from .digits import load_digits_dataset
from .errors import ChecksumError, CorruptDatasetError, DatasetNotFoundError
from .svhn import load_svhn
from .synthetic import load_synthetic

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "synthetic")

__all__ = [
    "DATASETS", "ChecksumError", "CorruptDatasetError", "DatasetNotFoundError", "DeviceLoader",
    "ImageDataset", "apply_augmentation", "augment_batch", "channel_stats", "derive_seed",
    "draw_augmentation", "load_cifar", "load_dataset", "load_digits_dataset", "load_synthetic",
    "load_svhn", "loaders_for", "shard_indices",
]


def load_dataset(name: str, data_dir: str | Path = "data", download: bool = False, *,
                 synthetic_classes: int = 100, synthetic_train: int = 50_000,
                 synthetic_test: int = 10_000, synthetic_seed: int = 0,
                 svhn_extra: bool = False, synthetic_image_size: int = 32) -> ImageDataset:
    """Load a dataset by name into uint8 CPU tensors.

    Args:
        name: one of DATASETS ("digits" is embedded; "cifar10"/"cifar100"/"svhn" read data_dir).
        data_dir: folder holding the CIFAR folder or archive, or the SVHN .mat files (ignored
            by the others).
        download: fetch the official CIFAR archive or SVHN files if missing (MD5-checked).
        synthetic_classes, synthetic_train, synthetic_test, synthetic_seed,
            synthetic_image_size: shape of the "synthetic" dataset (defaults: CIFAR-100's class
            count, split sizes and 32x32 images; 224 gives ImageNet-shaped inputs).
        svhn_extra: add SVHN's 531k-image extra split to its training split.

    Returns:
        ImageDataset.

    Raises:
        ValueError: unknown `name`.
        DatasetNotFoundError, CorruptDatasetError, ChecksumError: see `load_cifar`, `load_svhn`.
    """
    key = name.strip().lower()
    if key == "digits":
        return load_digits_dataset()
    if key in CIFAR_SPECS:
        return load_cifar(key, data_dir, download)
    if key == "svhn":
        return load_svhn(data_dir, download, extra=svhn_extra)
    if key == "synthetic":
        return load_synthetic(synthetic_classes, synthetic_train, synthetic_test,
                              seed=synthetic_seed, image_size=synthetic_image_size)
    raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
