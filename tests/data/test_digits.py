"""The embedded digits dataset: real data, fixed stratified split, CIFAR-compatible layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from one_fast.data import load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_shapes_and_dtypes(digits):
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.train_images.shape == (1437, 3, 16, 16)
    assert digits.test_images.shape == (360, 3, 16, 16)
    assert digits.train_images.dtype == torch.uint8 and digits.train_labels.dtype == torch.int64
    assert digits.train_labels.shape == (1437,) and digits.test_labels.shape == (360,)
    assert not digits.augment_flip and digits.augment_pad == 2


def test_pixels_are_the_sklearn_digits_upscaled(digits):
    bunch = load_digits()
    all_images = torch.cat([digits.train_images, digits.test_images])
    assert all_images.max() == 255 and all_images.min() == 0
    # Channels are copies; every 2x2 block is one original pixel scaled 16 -> 255.
    assert torch.equal(all_images[:, 0], all_images[:, 1])
    assert torch.equal(all_images[:, 0], all_images[:, 2])
    small = all_images[:, 0, ::2, ::2]
    for dy in (0, 1):
        for dx in (0, 1):
            assert torch.equal(all_images[:, 0, dy::2, dx::2], small)
    expected = np.rint(bunch.images * 255 / 16).astype(np.uint8)
    # Same multiset of (image, label) pairs as the original 1797.
    ours = sorted((bytes(x.numpy()), int(y)) for x, y in zip(
        small, torch.cat([digits.train_labels, digits.test_labels]), strict=True))
    theirs = sorted((bytes(x), int(y)) for x, y in zip(expected, bunch.target, strict=True))
    assert ours == theirs


def test_split_is_stratified(digits):
    train = torch.bincount(digits.train_labels, minlength=10)
    test = torch.bincount(digits.test_labels, minlength=10)
    total = train + test
    assert torch.all((test.double() - 0.2 * total.double()).abs() <= 1.0)
    assert int(test.sum()) == 360


def test_split_is_deterministic_and_disjoint(digits):
    again = load_dataset("digits")
    for a, b in ((digits.train_images, again.train_images),
                 (digits.test_labels, again.test_labels)):
        assert torch.equal(a, b)
    train_keys = {bytes(x.numpy()) for x in digits.train_images}
    assert not any(bytes(x.numpy()) in train_keys for x in digits.test_images)


def test_statistics_are_from_the_training_split(digits):
    x = digits.train_images.double() / 255
    assert digits.mean == pytest.approx(tuple(x.mean(dim=(0, 2, 3)).tolist()), abs=1e-12)
    assert digits.std == pytest.approx(
        tuple(x.std(dim=(0, 2, 3), unbiased=False).tolist()), abs=1e-12)
