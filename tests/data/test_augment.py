"""Batched crop/flip against a per-image loop that pads and slices each image explicitly."""

from __future__ import annotations

import pytest
import torch

from one_fast.data import apply_augmentation, augment_batch, draw_augmentation


def per_image_reference(images, offsets, flipped, pad):
    """Zero-pad each image, slice its crop at the drawn corner, mirror it if drawn."""
    n, c, h, w = images.shape
    out = []
    for k in range(n):
        padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=images.dtype)
        padded[:, pad:pad + h, pad:pad + w] = images[k]
        dy, dx = int(offsets[k, 0]), int(offsets[k, 1])
        crop = padded[:, dy:dy + h, dx:dx + w]
        out.append(crop.flip(-1) if bool(flipped[k]) else crop)
    return torch.stack(out)


def random_images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    # 1..255 so a zero in the output can only come from the padding
    return torch.randint(1, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("n, h, w", [(1, 8, 8), (7, 16, 16), (33, 32, 32), (5, 9, 13)])
@pytest.mark.parametrize("pad", [0, 1, 4])
@pytest.mark.parametrize("flip", [False, True])
def test_matches_per_image_loop(n, h, w, pad, flip):
    images = random_images(n, h, w)
    out, offsets, flipped = augment_batch(images, torch.Generator().manual_seed(1), pad, flip,
                                          return_params=True)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert offsets.shape == (n, 2) and offsets.dtype == torch.int64 and flipped.shape == (n,)
    assert int(offsets.min()) >= 0 and int(offsets.max()) <= 2 * pad
    if not flip:
        assert not flipped.any()
    assert torch.equal(out, per_image_reference(images, offsets, flipped, pad))


def test_parameters_cover_their_range():
    offsets, flipped = draw_augmentation(4000, 4, True, torch.Generator().manual_seed(0))
    assert set(offsets.flatten().tolist()) == set(range(9))  # every shift in [0, 2 * pad]
    assert 0.45 < flipped.float().mean().item() < 0.55
    counts = torch.bincount(offsets[:, 0], minlength=9).float()
    assert counts.min() > 0.8 * counts.mean()  # roughly uniform


def test_extreme_parameters_by_hand():
    """Corner offsets and flips on a tiny image, spelled out without any loop."""
    image = torch.arange(1, 10, dtype=torch.uint8).view(1, 1, 3, 3).expand(4, 3, 3, 3)
    offsets = torch.tensor([[0, 0], [2, 2], [1, 1], [1, 0]])
    flipped = torch.tensor([False, False, True, True])
    out = apply_augmentation(image.contiguous(), offsets, flipped, pad=1)[:, 0]
    assert out[0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]   # shifted down-right
    assert out[1].tolist() == [[5, 6, 0], [8, 9, 0], [0, 0, 0]]   # shifted up-left
    assert out[2].tolist() == [[3, 2, 1], [6, 5, 4], [9, 8, 7]]   # centred, mirrored
    assert out[3].tolist() == [[2, 1, 0], [5, 4, 0], [8, 7, 0]]   # shifted right, mirrored


def test_same_generator_state_same_output():
    images = random_images(16, 12, 12)
    a = augment_batch(images, torch.Generator().manual_seed(5), 2, True)
    b = augment_batch(images, torch.Generator().manual_seed(5), 2, True)
    c = augment_batch(images, torch.Generator().manual_seed(6), 2, True)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_non_contiguous_input():
    images = random_images(6, 10, 10).transpose(2, 3)
    out, offsets, flipped = augment_batch(images, torch.Generator().manual_seed(2), 3, True,
                                          return_params=True)
    assert torch.equal(out, per_image_reference(images.contiguous(), offsets, flipped, 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_matches_per_image_loop_on_cuda():
    images = random_images(64, 32, 32)
    gen = torch.Generator(device="cuda").manual_seed(3)
    out, offsets, flipped = augment_batch(images.cuda(), gen, 4, True, return_params=True)
    assert out.is_cuda and offsets.is_cuda
    assert torch.equal(out.cpu(), per_image_reference(images, offsets.cpu(), flipped.cpu(), 4))
