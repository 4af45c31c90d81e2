"""Dataset dispatch, the synthetic dataset, the ImageDataset record and channel statistics."""

from __future__ import annotations

import pytest
import torch

from one_fast.data import DATASETS, ImageDataset, channel_stats, load_dataset


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*digits.*cifar10.*cifar100"):
        load_dataset("imagenet")


def test_names_are_case_insensitive():
    assert load_dataset(" Digits ").name == "digits"
    assert DATASETS == ("digits", "cifar10", "cifar100", "svhn", "synthetic")


def test_synthetic_is_deterministic_and_shaped():
    kw = dict(synthetic_classes=7, synthetic_train=50, synthetic_test=13)
    a, b = load_dataset("synthetic", **kw), load_dataset("synthetic", **kw)
    c = load_dataset("synthetic", synthetic_seed=1, **kw)
    assert a.train_images.shape == (50, 3, 32, 32) and a.test_images.shape == (13, 3, 32, 32)
    assert a.num_classes == 7 and a.augment_flip and a.augment_pad == 4
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train_images, c.train_images)
    counts = torch.bincount(a.train_labels, minlength=7)
    assert int(counts.min()) == 7 and int(counts.max()) == 8  # balanced labels
    assert not torch.equal(a.train_labels, torch.arange(50) % 7)  # ...in random order


def test_synthetic_rejects_empty_sizes():
    with pytest.raises(ValueError, match="positive sizes"):
        load_dataset("synthetic", synthetic_classes=0)


def test_channel_stats_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (9, 3, 5, 4), dtype=torch.uint8, generator=g)
    images[:, 1] //= 4  # make the channels differ
    mean, std = channel_stats(images)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)
    with pytest.raises(ValueError, match="uint8"):
        channel_stats(images.float())


def test_image_dataset_validates_and_prints_briefly():
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.int64)
    ds = ImageDataset("toy", x, y, x[:2], y[:2], 2, (0.0,) * 3, (1.0,) * 3)
    assert repr(ds) == "ImageDataset(toy: 4 train / 2 test, 3x8x8, 2 classes)"
    assert ds.image_shape == (3, 8, 8)
    with pytest.raises(ValueError, match="labels must be int64"):
        ImageDataset("toy", x, y.int(), x, y, 2, (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(ValueError, match="images must be uint8"):
        ImageDataset("toy", x.float(), y, x, y, 2, (0.0,) * 3, (1.0,) * 3)
