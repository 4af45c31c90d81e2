"""ImageNet input pipeline throughput (images/s): DALI decode + augment alone, no model.

Generated JPEGs of ImageNet-like sizes (the ILSVRC2012 median is about 500x375 at ~110 KB) in an
ImageNet-layout folder, read through the loader the trainer uses (`ImageNetLoader`), output
normalised at 224x224:

* ``train``: decode + random-resized-crop + flip + normalise (the training transform);
* ``eval``: decode + resize shorter side to 256 + centre crop + normalise.

CUDA: decoding in DALI's mixed mode (nvJPEG / hardware decoder), 1024 images in batches of
128, bf16 channels_last output as the trainer takes it. CPU: DALI's CPU mode, 48 images in
batches of 16, float32. One timed call is a full pass as the trainer makes it once per epoch:
the pipeline build, and at the end the teardown, which waits for the batches DALI had already
scheduled past the end (up to prefetch - 1: a large share of these short passes, ~1% of an
ImageNet epoch). ``steady_images_per_s`` is the rate batches arrived during the pass (build and
teardown excluded): the figure to compare with a training step's images/s. Skipped without
DALI.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from one_fast.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INSTALL_HINT,
    ImageNetLoader,
    dali_available,
    find_imagenet,
)

from .environment import DEVICE, LABEL, is_cuda
from .harness import measure

pytestmark = pytest.mark.skipif(not dali_available(), reason=f"DALI not installed: {INSTALL_HINT}")

IMAGES, BATCH = (1024, 128) if is_cuda() else (48, 16)
CLASSES = 4
SIZES = ((500, 375), (375, 500), (500, 333), (400, 400), (640, 480))  # (width, height)


def _photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour regions plus fine noise: compresses to roughly a photo's JPEG size."""
    coarse = rng.integers(0, 256, (height // 25 + 2, width // 25 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    noise = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_bench")
    rng = np.random.default_rng(0)
    tiles = [_photo_like(rng, w, h) for w, h in SIZES * 2]  # encoded once each, copied
    encoded = []
    for k, img in enumerate(tiles):
        path = root / f"tile{k}.JPEG"
        img.save(path, format="JPEG", quality=90)
        encoded.append(path.read_bytes())
    for split in ("train", "val"):
        for i in range(IMAGES):
            path = root / split / f"n{i % CLASSES:08d}" / f"{split}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded[i % len(encoded)])
    return root, float(np.mean([len(b) for b in encoded]))


@pytest.mark.parametrize("transform", ["train", "eval"], ids=lambda t: f"{LABEL.lower()}-{t}")
def test_imagenet_pipeline(benchmark, folder, transform):
    root, mean_bytes = folder
    layout = find_imagenet(root)
    cuda = is_cuda()
    loader = ImageNetLoader(layout.train if transform == "train" else layout.val, BATCH,
                            device=DEVICE, seed=0, augment=transform == "train",
                            drop_last=True, image_size=224,
                            dtype=torch.bfloat16 if cuda else torch.float32,
                            channels_last=cuda)

    def one_pass(epoch: int) -> None:
        batches = loader.epoch_batches(epoch) if transform == "train" else loader.eval_batches()
        for _ in batches:
            pass

    # Validate before timing: shapes, dtype, labels, and values in the normalised range.
    images, labels = next(loader.epoch_batches(0))
    assert images.shape == (BATCH, 3, 224, 224) and images.device.type == DEVICE.type
    assert labels.dtype == torch.int64 and 0 <= int(labels.min()) <= int(labels.max()) < CLASSES
    lo = min(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
    assert lo - 0.05 <= float(images.float().min()) and float(images.float().max()) <= hi + 0.05
    benchmark.group = f"{LABEL} ImageNet pipeline 224x224 ({'mixed' if cuda else 'cpu'} decode)"
    timing = measure(benchmark, one_pass, sets=1000, warmup=1, min_rounds=3, max_rounds=20)
    stats = loader.stats
    info = dict(images_per_pass=loader.steps_per_epoch * BATCH, batch=BATCH,
                threads=loader.num_threads, mean_jpeg_bytes=mean_bytes,
                steady_images_per_s=stats.images / max(stats.elapsed_s - stats.build_s, 1e-9),
                build_s=stats.build_s)
    if timing is not None:
        info.update(timing.as_info(),
                    images_per_s=loader.steps_per_epoch * BATCH / timing.median_s)
    benchmark.extra_info.update(info)
