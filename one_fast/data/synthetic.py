"""Random images and labels of CIFAR (or any square) shape, for benchmarks and tests."""

from __future__ import annotations

import torch

from .dataset import ImageDataset, channel_stats


def _split(n: int, num_classes: int, size: int, generator: torch.Generator):
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    # Balanced labels in random order: every class appears whenever n >= num_classes.
    labels = torch.arange(n, dtype=torch.int64) % num_classes
    labels = labels[torch.randperm(n, generator=generator)]
    return images, labels


def load_synthetic(num_classes: int = 100, num_train: int = 50_000, num_test: int = 10_000,
                   *, seed: int = 0, image_size: int = 32) -> ImageDataset:
    """Uniformly random uint8 images with balanced random labels, deterministic from `seed`.

    The default sizes match CIFAR (50k/10k, 3x32x32) so benchmarks see the real workload.
    There is nothing to learn: use it for speed, memory and pipeline tests only.

    Args:
        num_classes: number of classes (>= 1).
        num_train, num_test: split sizes (>= 1).
        seed: the same seed always gives the same images and labels.
        image_size: height and width (32: CIFAR; 224: the ImageNet networks' input).

    Returns:
        ImageDataset "synthetic" with CIFAR-like augmentation defaults (flip, 4-pixel crop).
    """
    if num_classes < 1 or num_train < 1 or num_test < 1 or image_size < 1:
        raise ValueError(f"synthetic dataset needs positive sizes, got num_classes={num_classes}, "
                         f"num_train={num_train}, num_test={num_test}, image_size={image_size}")
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = _split(num_train, num_classes, image_size, generator)
    test_images, test_labels = _split(num_test, num_classes, image_size, generator)
    mean, std = channel_stats(train_images)
    return ImageDataset("synthetic", train_images, train_labels, test_images, test_labels,
                        num_classes, mean, std, augment_flip=True, augment_pad=4)
