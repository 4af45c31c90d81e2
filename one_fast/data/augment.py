"""Batched random-crop and horizontal-flip augmentation of uint8 images, on their device.

One draw of per-image parameters, then one torch.gather: the output pixel (n, c, i, j) reads the
zero-padded input at row dy[n] + i and column dx[n] + (W - 1 - j if flipped[n] else j).
No per-image Python, no host synchronisation, so it runs inside a CUDA-graph-friendly step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_augmentation(n: int, pad: int, flip: bool,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw crop offsets and flip decisions for `n` images from `generator`, on its device.

    Args:
        n: batch size.
        pad: zero padding per side; offsets are uniform in [0, 2 * pad].
        flip: whether to draw flips (Bernoulli 0.5); if False, no image is flipped.
        generator: source of randomness; it is advanced exactly as `augment_batch` advances it.

    Returns:
        offsets: int64 (n, 2), (row, column) of each crop's corner in the padded image.
        flipped: bool (n,).
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    device = generator.device
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=device)
    if flip:
        flipped = torch.rand(n, generator=generator, device=device) < 0.5
    else:
        flipped = torch.zeros(n, dtype=torch.bool, device=device)
    return offsets, flipped


def apply_augmentation(images: torch.Tensor, offsets: torch.Tensor, flipped: torch.Tensor,
                       pad: int) -> torch.Tensor:
    """Crop each image at its offset from its zero-padded copy, mirrored where `flipped`.

    Args:
        images: (N, C, H, W), any dtype (uint8 in the pipeline).
        offsets: int64 (N, 2) in [0, 2 * pad].
        flipped: bool (N,).
        pad: zero padding per side.

    Returns:
        (N, C, H, W) tensor of the same dtype and device.
    """
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    wp = w + 2 * pad
    i = torch.arange(h, device=device)
    j = torch.arange(w, device=device)
    rows = offsets[:, :1] + i  # (N, H)
    cols = offsets[:, 1:] + torch.where(flipped[:, None], (w - 1) - j, j)  # (N, W)
    # One gather over the flattened padded plane; the (N, H*W) index is shared by channels.
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    out = torch.gather(padded.reshape(n, c, -1), 2, index)
    return out.view(n, c, h, w)


def augment_batch(images: torch.Tensor, generator: torch.Generator, pad: int, flip: bool, *,
                  return_params: bool = False):
    """Random crop with zero padding and optional random horizontal flip, for a whole batch.

    Args:
        images: uint8 (N, C, H, W) on the generator's device.
        generator: torch.Generator on the images' device; the result is a function of its state.
        pad: zero padding per side (0 disables cropping).
        flip: whether to flip each image with probability 0.5.
        return_params: also return the drawn (offsets, flipped), for tests and debugging.

    Returns:
        The augmented batch, or (batch, offsets, flipped) when `return_params`.
    """
    offsets, flipped = draw_augmentation(images.shape[0], pad, flip, generator)
    out = apply_augmentation(images, offsets, flipped, pad)
    return (out, offsets, flipped) if return_params else out
