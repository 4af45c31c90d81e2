"""The in-memory dataset record every loader returns, and per-channel statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) standard deviation of uint8 images, in [0, 1] units.

    Computed from a 256-bin histogram per channel, so no float copy of the images is made
    (CIFAR's training split would need 600 MB as float32).

    Args:
        images: uint8 tensor of shape (N, C, H, W).

    Returns:
        (mean, std): two tuples of C floats.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images of shape (N, C, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / n
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset held in CPU memory as uint8.

    Attributes:
        name: dataset name as accepted by `load_dataset`.
        train_images: uint8 (N_train, 3, H, W).
        train_labels: int64 (N_train,), values in [0, num_classes).
        test_images: uint8 (N_test, 3, H, W).
        test_labels: int64 (N_test,).
        num_classes: number of classes.
        mean, std: per-channel statistics of the training split in [0, 1] units, for
            normalising as (x / 255 - mean) / std.
        augment_flip: whether horizontal flips are a valid augmentation for this data.
        augment_pad: zero padding (pixels per side) for random-crop augmentation.
    """

    name: str
    train_images: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor = field(repr=False)
    test_images: torch.Tensor = field(repr=False)
    test_labels: torch.Tensor = field(repr=False)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment_flip: bool = True
    augment_pad: int = 4

    def __post_init__(self) -> None:
        for split, images, labels in (("train", self.train_images, self.train_labels),
                                      ("test", self.test_images, self.test_labels)):
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"{self.name} {split} images must be uint8 (N, 3, H, W), got "
                                 f"{images.dtype} {tuple(images.shape)}")
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise ValueError(f"{self.name} {split} labels must be int64 ({images.shape[0]},),"
                                 f" got {labels.dtype} {tuple(labels.shape)}")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(f"{self.name}: train and test image shapes differ")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.train_images.shape[1:])

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (f"ImageDataset({self.name}: {len(self.train_labels)} train / "
                f"{len(self.test_labels)} test, {c}x{h}x{w}, {self.num_classes} classes)")
