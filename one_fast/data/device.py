"""Device-resident input pipeline: uint8 split on the device, batches drawn and augmented there.

Randomness is a pure function of (seed, epoch, rank): every epoch builds a fresh
torch.Generator on the loader's device from those numbers, so epoch e yields the same batches
whether or not training restarted before it, and no RNG state needs checkpointing.
"""

from __future__ import annotations

import hashlib
import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch

from .augment import augment_batch
from .dataset import ImageDataset

__all__ = ["DeviceLoader", "ShardLoader", "augment_batch", "derive_seed", "loaders_for",
           "shard_indices"]

Batch = tuple[torch.Tensor, torch.Tensor]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a fixed hash of the integers `parts` (e.g. seed, epoch, rank)."""
    packed = struct.pack(f"<{len(parts)}Q", *(p & 0xFFFF_FFFF_FFFF_FFFF for p in parts))
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little") >> 1


def shard_indices(n: int, rank: int, world_size: int, seed: int, equal: bool) -> torch.Tensor:
    """Sorted global indices of rank `rank`'s shard of `n` samples (CPU int64).

    Shards are disjoint and fixed by `seed` (identical on every rank, whatever its device).
    With `equal`, all shards have n // world_size samples (up to world_size - 1 are left out),
    as training needs the same number of steps on every rank; otherwise they cover all n
    samples, sizes differing by at most one (for sharded evaluation). One rank gets 0..n-1.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if world_size == 1:
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, n)))
    if equal:
        perm = perm[: n - n % world_size]
    return perm[rank::world_size].sort().values


class ShardLoader(ABC):
    """What every loader shares: batches of this rank's shard of a split, counted one way.

    A subclass sets ``batch_size``, ``drop_last``, ``mean`` and ``std`` (per-channel, in
    [0, 1] units) and defines :attr:`num_samples` and :attr:`image_shape`.
    """

    batch_size: int
    drop_last: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    @abstractmethod
    def num_samples(self) -> int:
        """Images held by this rank."""

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image in a batch."""

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch (drop_last: full batches only)."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def __len__(self) -> int:
        return self.steps_per_epoch


class DeviceLoader(ShardLoader):
    """Fixed-shape normalised batches from a uint8 split held on `device`.

    Args:
        images_u8: uint8 (N, C, H, W), any device; only this rank's shard is copied to `device`.
        labels: int64 (N,).
        batch_size: images per batch *per rank* (the global batch is batch_size * world_size).
        device: where the data live and batches are produced.
        mean, std: per-channel statistics in [0, 1] units; batches are (x / 255 - mean) / std.
        augment: apply random crop / flip in `epoch_batches`.
        pad: zero padding per side for the random crop (0: no crop).
        flip: random horizontal flips.
        seed: run seed; the shard split and every epoch's randomness derive from it.
        rank, world_size: this process's place in data-parallel training.
        drop_last: training mode: equal shards and only full batches (fixed shapes). False:
            shards cover the whole split and the last batch may be smaller.
        channels_last: return batches in channels_last memory format.
        dtype: floating dtype of the returned images.
    """

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 device: torch.device | str, mean: Sequence[float], std: Sequence[float],
                 augment: bool, pad: int, flip: bool, seed: int, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        if images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images_u8.dtype} "
                             f"{tuple(images_u8.shape)}")
        if labels.shape != images_u8.shape[:1]:
            raise ValueError(f"labels must have shape ({images_u8.shape[0]},), got "
                             f"{tuple(labels.shape)}")
        channels = images_u8.shape[1]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"mean and std need {channels} values with std > 0, got "
                             f"{mean}, {std}")
        if batch_size < 1 or pad < 0:
            raise ValueError(f"batch_size must be >= 1 and pad >= 0, got {batch_size}, {pad}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be floating, got {dtype}")

        self.indices = shard_indices(len(labels), rank, world_size, seed, equal=drop_last)
        if drop_last and len(self.indices) < batch_size:
            raise ValueError(f"rank {rank}'s shard holds {len(self.indices)} images, fewer than "
                             f"batch_size {batch_size}: with drop_last no batch would be made")
        src = self.indices.to(images_u8.device)
        self.images = images_u8[src].to(device)
        self.labels = labels[src.to(labels.device)].to(device=self.images.device,
                                                        dtype=torch.int64)
        self.device = self.images.device
        self.batch_size, self.augment, self.pad, self.flip = batch_size, augment, pad, flip
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last, self.channels_last, self.dtype = drop_last, channels_last, dtype
        self.mean, self.std = tuple(mean), tuple(std)
        # (x / 255 - mean) / std == x * scale + shift, computed in float32 (float64 if asked).
        self._math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        std_t = torch.tensor(std, dtype=torch.float64)
        mean_t = torch.tensor(mean, dtype=torch.float64)
        shape = (1, channels, 1, 1)
        self._scale = (1.0 / (255.0 * std_t)).to(self.device, self._math_dtype).view(shape)
        self._shift = (-mean_t / std_t).to(self.device, self._math_dtype).view(shape)

    @property
    def num_samples(self) -> int:
        """Images held by this rank."""
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image in a batch."""
        return tuple(self.images.shape[1:])

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """The generator behind `epoch`'s permutation and augmentation, seeded from
        (seed, epoch, rank) and living on the loader's device."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.seed, epoch, self.rank))
        return gen

    def normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) on the device → normalised `dtype` batch."""
        if self.channels_last:
            images_u8 = images_u8.contiguous(memory_format=torch.channels_last)
        x = images_u8.to(self._math_dtype).mul_(self._scale).add_(self._shift)
        return x if x.dtype == self.dtype else x.to(self.dtype)

    def epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """Yield `steps_per_epoch` (images, labels) batches of epoch `epoch`.

        Images are float (batch_size, C, H, W), labels int64 (batch_size,), both on the device,
        from a device-side permutation of this rank's shard; each image appears at most once.
        Augmented when `augment`. The same epoch always yields the same batches.
        """
        gen = self.epoch_generator(epoch)
        order = torch.randperm(self.num_samples, generator=gen, device=self.device)
        b = self.batch_size
        for step in range(self.steps_per_epoch):
            idx = order[step * b:(step + 1) * b]
            images = self.images.index_select(0, idx)  # much faster than [idx] for uint8
            if self.augment and (self.pad or self.flip):
                images = augment_batch(images, gen, self.pad, self.flip)
            yield self.normalize(images), self.labels.index_select(0, idx)

    def eval_batches(self) -> Iterator[Batch]:
        """Yield every image this loader holds exactly once, in order, unaugmented; the last
        batch may be smaller. With world_size 1 that is the whole split."""
        for start in range(0, self.num_samples, self.batch_size):
            end = start + self.batch_size
            yield self.normalize(self.images[start:end]), self.labels[start:end]


def loaders_for(dataset: ImageDataset, batch_size: int, *, device: torch.device | str,
                seed: int, rank: int = 0, world_size: int = 1, eval_batch_size: int | None = None,
                shard_eval: bool = False, augment: bool = True, channels_last: bool = False,
                dtype: torch.dtype = torch.float32) -> tuple[DeviceLoader, DeviceLoader]:
    """Training and test loaders for `dataset` with its augmentation defaults.

    Args:
        dataset: the loaded dataset.
        batch_size: per-rank training batch.
        device, seed, rank, world_size, channels_last, dtype: as for DeviceLoader.
        eval_batch_size: test batch (default: batch_size).
        shard_eval: split the test set across ranks (covering it exactly once in total)
            instead of giving every rank the whole test set.
        augment: use the dataset's crop/flip defaults on the training split.

    Returns:
        (train_loader, test_loader); iterate `train_loader.epoch_batches(epoch)` and
        `test_loader.eval_batches()`.
    """
    common = dict(device=device, mean=dataset.mean, std=dataset.std, seed=seed,
                  channels_last=channels_last, dtype=dtype)
    train = DeviceLoader(dataset.train_images, dataset.train_labels, batch_size,
                         augment=augment, pad=dataset.augment_pad, flip=dataset.augment_flip,
                         rank=rank, world_size=world_size, drop_last=True, **common)
    test = DeviceLoader(dataset.test_images, dataset.test_labels, eval_batch_size or batch_size,
                        augment=False, pad=0, flip=False, rank=rank if shard_eval else 0,
                        world_size=world_size if shard_eval else 1, drop_last=False, **common)
    return train, test
