"""The synthetic dataset at ImageNet size, through load_dataset."""

from __future__ import annotations

import pytest
import torch

from one_fast.data import load_dataset


def test_synthetic_image_size_reaches_the_images():
    data = load_dataset("synthetic", synthetic_classes=3, synthetic_train=4, synthetic_test=2,
                        synthetic_image_size=224)
    assert data.train_images.shape == (4, 3, 224, 224)
    assert data.test_images.shape == (2, 3, 224, 224)
    assert data.train_images.dtype == torch.uint8
    assert load_dataset("synthetic", synthetic_classes=3, synthetic_train=4,
                        synthetic_test=2).train_images.shape[-1] == 32


def test_synthetic_image_size_must_be_positive():
    with pytest.raises(ValueError, match="image_size=0"):
        load_dataset("synthetic", synthetic_image_size=0)
