"""The DALI ImageNet loader with GPU decoding (device="mixed"): batches land in CUDA tensors in
the layout and dtype the trainer asks for and agree with DALI's CPU mode. Needs CUDA and DALI."""

from __future__ import annotations

import pytest
import torch

from one_fast.data.errors import CorruptDatasetError
from one_fast.data.imagenet import ImageNetLoader, dali_available, find_imagenet

from .imagenet_files import WNIDS, identify_flat_images, make_tiny_imagenet

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not dali_available(), reason='NVIDIA DALI is not installed '
                       '(pip install nvidia-dali-cuda130)'),
]
SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_imagenet(tmp_path_factory.mktemp("imagenet_gpu"))


def _loader(split, device, **kwargs):
    common = dict(seed=0, augment=False, drop_last=False, image_size=SIZE, num_threads=2)
    return ImageNetLoader(split, 4, device=device, **{**common, **kwargs})


def test_mixed_decoding_fills_cuda_batches_in_the_asked_format(tiny):
    layout = find_imagenet(tiny.root)
    loader = _loader(layout.train, "cuda", augment=True, drop_last=True,
                     dtype=torch.bfloat16, channels_last=True)
    expected = tiny.expected("train")
    batches = list(loader.epoch_batches(0))
    assert len(batches) == loader.steps_per_epoch == 4
    for images, labels in batches:
        assert images.is_cuda and labels.is_cuda and images.dtype == torch.bfloat16
        assert images.shape == (4, 3, SIZE, SIZE)
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert labels.dtype == torch.int64
        files = identify_flat_images(images, expected)  # greyscale file included
        assert labels.tolist() == [expected[f][0] for f in files]
    again = list(loader.epoch_batches(0))
    for (x1, y1), (x2, y2) in zip(batches, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert loader.stats.images == 16


def test_mixed_and_cpu_evaluation_agree(tiny):
    layout = find_imagenet(tiny.root)  # val holds the CMYK file
    gpu = torch.cat([x.cpu() for x, _ in _loader(layout.val, "cuda").eval_batches()])
    cpu = torch.cat([x for x, _ in _loader(layout.val, "cpu").eval_batches()])
    # nvJPEG and the CPU decoder may round colour conversion differently: 2 levels of 255.
    assert (gpu - cpu).abs().max() <= 2 / 255 / 0.224
    assert sorted(identify_flat_images(gpu, tiny.expected("val"))) == sorted(layout.val.files)


def test_corrupt_jpeg_is_named_with_gpu_decoding(tmp_path):
    root = make_tiny_imagenet(tmp_path / "bad", {"train": 4, "val": 1}, odd_files=False).root
    good = (root / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG").read_bytes()
    (root / "train" / WNIDS[0] / "broken.JPEG").write_bytes(good[: len(good) // 3])
    loader = _loader(find_imagenet(root).train, "cuda", augment=True, drop_last=True)
    with pytest.raises(CorruptDatasetError, match=r"broken\.JPEG cannot be decoded"):
        for _ in loader.epoch_batches(0):
            pass
