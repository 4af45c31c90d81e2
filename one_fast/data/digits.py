"""scikit-learn's bundled handwritten digits: the embedded default dataset (no download).

1797 real 8x8 grey-level scans (values 0..16) of the digits 0-9 (UCI "optdigits" test set).
They are rescaled to uint8 0..255 and enlarged to 16x16 by *nearest-neighbour* replication:
every original pixel becomes an exact 2x2 block, so the data keep their original 17 grey
levels and nothing is invented by interpolation (bilinear would only blur the strokes and make
the values depend on an interpolation convention), and a 2-pixel random crop is a shift by
exactly one original pixel. 16x16 (rather than 32x32) keeps a ResNet epoch cheap enough for the
default run to finish on two CPU cores in about two minutes. The grey image is copied to three
channels so the same network runs on digits and CIFAR.
"""

from __future__ import annotations

import numpy as np
import torch

from .dataset import ImageDataset, channel_stats

TEST_FRACTION = 0.2
SPLIT_SEED = 0
UPSCALE = 2


def load_digits_dataset() -> ImageDataset:
    """The digits dataset with its fixed stratified 80/20 train/test split.

    Returns:
        ImageDataset "digits": 1437 train / 360 test images, uint8 (N, 3, 16, 16), 10 classes;
        augmentation defaults: no flips (a mirrored digit is not the same digit), 2-pixel crop.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - scikit-learn is a runtime dependency
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from e

    bunch = load_digits()
    grey = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                                           stratify=labels, random_state=SPLIT_SEED)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)  # order independent of sklearn

    images = torch.from_numpy(grey)
    images = images.repeat_interleave(UPSCALE, dim=1).repeat_interleave(UPSCALE, dim=2)
    images = images.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()  # (N, 3, 16, 16)
    targets = torch.from_numpy(labels)

    train_images = images[torch.from_numpy(train_idx)]
    mean, std = channel_stats(train_images)
    return ImageDataset(
        name="digits",
        train_images=train_images,
        train_labels=targets[torch.from_numpy(train_idx)],
        test_images=images[torch.from_numpy(test_idx)],
        test_labels=targets[torch.from_numpy(test_idx)],
        num_classes=10,
        mean=mean,
        std=std,
        augment_flip=False,
        augment_pad=2,
    )
