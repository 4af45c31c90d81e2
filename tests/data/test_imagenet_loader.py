"""The DALI ImageNet loader in DALI's CPU mode: batches, labels, normalisation, determinism,
shards, odd and corrupt JPEGs. Skipped when DALI is not installed (CI installs it)."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from one_fast.data.errors import CorruptDatasetError
from one_fast.data.imagenet import (
    DaliNotInstalledError,
    ImageNetLoader,
    dali_available,
    find_imagenet,
    imagenet_loaders,
)

from .imagenet_files import WNIDS, identify_flat_images, make_tiny_imagenet

needs_dali = pytest.mark.skipif(not dali_available(), reason='NVIDIA DALI is not installed '
                                '(pip install nvidia-dali-cuda130)')
SIZE = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_imagenet(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def layout(tiny):
    return find_imagenet(tiny.root)


@needs_dali
def test_training_batches_shapes_dtypes_labels_and_normalisation(tiny, layout):
    loader = ImageNetLoader(layout.train, 4, device="cpu", seed=0, augment=True,
                            drop_last=True, image_size=SIZE, num_threads=2)
    expected = tiny.expected("train")
    assert loader.steps_per_epoch == 19 // 4
    seen = []
    for images, labels in loader.epoch_batches(0):
        assert images.shape == (4, 3, SIZE, SIZE) and images.dtype == torch.float32
        assert labels.shape == (4,) and labels.dtype == torch.int64
        files = identify_flat_images(images, expected)
        assert labels.tolist() == [expected[f][0] for f in files]
        seen += files
    assert len(set(seen)) == len(seen) == 16
    assert seen == [layout.train.files[i] for i in loader.epoch_order(0)]
    stats = loader.stats
    assert stats.images == 16 and stats.batches == 4 and 0 < stats.wait_s <= stats.elapsed_s


@needs_dali
def test_greyscale_and_cmyk_decode_to_rgb(tiny, layout):
    # The greyscale file is in train, the CMYK one in val; both must come out as 3 channels
    # with the colour Pillow gives them.
    for split in ("train", "val"):
        loader = ImageNetLoader(getattr(layout, split), 32, device="cpu", seed=0, augment=False,
                                drop_last=False, image_size=SIZE, num_threads=2)
        (images, labels), = list(loader.eval_batches())
        files = identify_flat_images(images, tiny.expected(split))
        assert sorted(files) == sorted(getattr(layout, split).files)
    assert any("grey" in f for f in layout.train.files)
    assert any("cmyk" in f for f in layout.val.files)


@needs_dali
def test_eval_covers_the_split_in_order_and_is_deterministic(tiny, layout):
    loader = ImageNetLoader(layout.val, 4, device="cpu", seed=0, augment=False,
                            drop_last=False, image_size=SIZE, num_threads=2)
    first = list(loader.eval_batches())
    assert [len(y) for _, y in first] == [4, 4, 2]  # 10 images, last batch not padded
    files = [f for x, _ in first for f in identify_flat_images(x, tiny.expected("val"))]
    assert files == list(layout.val.files)
    assert torch.cat([y for _, y in first]).tolist() == layout.val.labels.tolist()
    second = list(loader.eval_batches())
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@needs_dali
def test_eval_transform_is_resize_shorter_side_then_centre_crop(tmp_path):
    """A horizontal ramp: the centre crop of the resized image shows the middle of the ramp,
    left to right, at the resized scale."""
    from PIL import Image

    from one_fast.data.imagenet import eval_resize
    root = make_tiny_imagenet(tmp_path / "ramp", {"train": 1, "val": 1}, odd_files=False).root
    w, h = 96, 48
    ramp = np.tile(np.linspace(16, 240, w), (h, 1))
    img = np.repeat(ramp[:, :, None], 3, axis=2).round().astype(np.uint8)
    Image.fromarray(img).save(root / "val" / WNIDS[0] / "ramp.JPEG", quality=100)
    split = find_imagenet(root).val
    loader = ImageNetLoader(split, 8, device="cpu", seed=0, augment=False, drop_last=False,
                            image_size=SIZE, num_threads=1, dtype=torch.uint8)
    (images, _), = list(loader.eval_batches())
    out = images[list(split.files).index(f"{WNIDS[0]}/ramp.JPEG")].float()[0]  # (S, S) red
    short = eval_resize(SIZE)
    new_w = w * short / h
    left = (new_w - SIZE) / 2
    cols = torch.arange(SIZE, dtype=torch.float64)
    source_x = (cols + left + 0.5) * w / new_w - 0.5  # output column centre in the source
    expected = 16 + (240 - 16) * source_x / (w - 1)
    row = out.mean(0).double()
    assert (row - expected).abs().max() < 4.0  # half a column of slope at most, plus JPEG
    assert (out.amax(0) - out.amin(0)).max() <= 2  # constant down each column
    assert eval_resize(224) == 256  # the standard ratio, which `short` above scales


@needs_dali
def test_training_epoch_is_reproducible_and_differs_between_epochs(layout):
    def epoch(seed, e):
        loader = ImageNetLoader(layout.train, 4, device="cpu", seed=seed, augment=True,
                                drop_last=True, image_size=SIZE, num_threads=2)
        return [(x.clone(), y.clone()) for x, y in loader.epoch_batches(e)], loader

    a, loader = epoch(0, 1)
    b, _ = epoch(0, 1)  # a fresh loader, as after a resume
    for (x1, y1), (x2, y2) in zip(a, b, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not np.array_equal(loader.epoch_order(1), loader.epoch_order(2))
    c, _ = epoch(1, 1)
    assert any(not torch.equal(y1, y2) for (_, y1), (_, y2) in zip(a, c, strict=True))


@needs_dali
def test_random_resized_crop_and_flip_vary_the_training_images(tmp_path):
    """24 copies of a left-to-right ramp: the training transform must cut different windows
    (different ranges of the ramp) and flip about half of them (ramp running right to left)."""
    from PIL import Image
    root = make_tiny_imagenet(tmp_path / "ramp", {"train": 1, "val": 1}, odd_files=False).root
    ramp = np.tile(np.linspace(0, 255, 96), (96, 1)).round().astype(np.uint8)
    for wnid in WNIDS:
        for j in range(8):
            Image.fromarray(ramp).save(root / "train" / wnid / f"r{j}.JPEG", quality=95)
    split = find_imagenet(root).train
    loader = ImageNetLoader(split, 27, device="cpu", seed=3, augment=True, drop_last=True,
                            image_size=SIZE, num_threads=2, dtype=torch.uint8)
    (images, _), = list(loader.epoch_batches(0))
    x = images.float()[:, 0]  # (27, S, S), the red channel
    ramps = x[(x.amax((1, 2)) - x.amin((1, 2))) > 10]  # the flat-colour images are not ramps
    assert len(ramps) == 24
    left, right = ramps[:, :, : SIZE // 2].mean((1, 2)), ramps[:, :, SIZE // 2:].mean((1, 2))
    flipped = int((left > right).sum())
    assert 4 <= flipped <= 20  # Binomial(24, 1/2): outside this with probability < 0.2%
    ranges = {(round(float(r[:, 0].mean())), round(float(r[:, -1].mean()))) for r in ramps}
    assert len(ranges) > 12  # random windows, not one fixed crop


@needs_dali
@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shards_are_disjoint_equal_and_cover_the_split(tiny, layout, world_size):
    train = [ImageNetLoader(layout.train, 2, device="cpu", seed=5, augment=True,
                            drop_last=True, image_size=SIZE, rank=r, world_size=world_size,
                            num_threads=1) for r in range(world_size)]
    steps = {t.steps_per_epoch for t in train}
    assert steps == {(19 // world_size) // 2}  # the same epoch length on every rank
    shards = [set(t.indices.tolist()) for t in train]
    assert sum(len(s) for s in shards) == len(set().union(*shards)) == 19 - 19 % world_size
    val = [ImageNetLoader(layout.val, 3, device="cpu", seed=5, augment=False, drop_last=False,
                          image_size=SIZE, rank=r, world_size=world_size, num_threads=1)
           for r in range(world_size)]
    seen = []  # what the pipelines actually deliver, identified by colour
    for loader in val:
        for images, _ in loader.eval_batches():
            seen += identify_flat_images(images, tiny.expected("val"))
    assert sorted(seen) == sorted(layout.val.files)  # each image exactly once
    # Training: each rank's delivered epoch is its own permutation of its own shard.
    for t in train[:2]:
        expected = tiny.expected("train")
        files = [f for x, _ in t.epoch_batches(0) for f in identify_flat_images(x, expected)]
        assert files == [layout.train.files[i] for i in t.epoch_order(0)]
        assert set(t.epoch_order(0).tolist()) <= set(t.indices.tolist())


@needs_dali
def test_channels_last_uint8_and_bfloat16_outputs(tiny, layout):
    common = dict(device="cpu", seed=0, augment=False, drop_last=False, image_size=SIZE,
                  num_threads=1)
    ref, _ = next(ImageNetLoader(layout.val, 4, **common).eval_batches())
    cl, _ = next(ImageNetLoader(layout.val, 4, channels_last=True, **common).eval_batches())
    assert cl.shape == ref.shape and cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl, ref)
    bf, _ = next(ImageNetLoader(layout.val, 4, dtype=torch.bfloat16, **common).eval_batches())
    assert bf.dtype == torch.bfloat16 and torch.equal(bf, ref.to(torch.bfloat16))
    raw, _ = next(ImageNetLoader(layout.val, 4, dtype=torch.uint8, **common).eval_batches())
    assert raw.dtype == torch.uint8
    identify_flat_images(raw, tiny.expected("val"), normalised=False)


@needs_dali
def test_corrupt_jpeg_is_named(tmp_path):
    root = make_tiny_imagenet(tmp_path / "bad", {"train": 4, "val": 1}, odd_files=False).root
    good = (root / "train" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG").read_bytes()
    bad = root / "train" / WNIDS[1] / "broken.JPEG"
    bad.write_bytes(good[: len(good) // 3])  # truncated mid-scan
    loader = ImageNetLoader(find_imagenet(root).train, 2, device="cpu", seed=0, augment=True,
                            drop_last=True, image_size=SIZE, num_threads=2, prefetch=2)
    with pytest.raises(CorruptDatasetError, match=r"broken\.JPEG cannot be decoded") as failed:
        for _ in loader.epoch_batches(0):
            pass
    # The first epoch is epoch 1, as the trainer's lines and metrics.jsonl count it.
    assert "(epoch 1, batch " in str(failed.value), failed.value


def test_loaders_without_dali_say_how_to_install(layout, monkeypatch):
    real_import = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali") or name == "nvidia":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    assert not dali_available()
    with pytest.raises(DaliNotInstalledError,
                       match=r'pip install nvidia-dali-cuda130 .*-e "\.\[imagenet\]"'):
        imagenet_loaders(layout, 4, device="cpu", seed=0)


@needs_dali
def test_bad_arguments_are_named(layout):
    common = dict(device="cpu", seed=0, augment=True, drop_last=True)
    with pytest.raises(ValueError, match="batch_size"):
        ImageNetLoader(layout.train, 0, **common)
    with pytest.raises(ValueError, match="fewer than batch_size 64"):
        ImageNetLoader(layout.train, 64, **common)
    with pytest.raises(ValueError, match="dtype"):
        ImageNetLoader(layout.train, 4, dtype=torch.int32, **common)
    with pytest.raises(ValueError, match="num_threads"):
        ImageNetLoader(layout.train, 4, num_threads=0, **common)


@needs_dali
def test_batches_stay_valid_after_later_batches_arrive(tiny, layout):
    """Holding a whole epoch's batches (more than DALI prefetches) must not let later batches
    overwrite earlier ones."""
    loader = ImageNetLoader(layout.train, 2, device="cpu", seed=4, augment=True,
                            drop_last=True, image_size=SIZE, num_threads=2, prefetch=2)
    snapshots, held = [], []
    for images, labels in loader.epoch_batches(0):
        snapshots.append((images.clone(), labels.clone()))
        held.append((images, labels))
    assert len(held) == 9
    for (x1, y1), (x2, y2) in zip(snapshots, held, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@needs_dali
def test_batches_are_handed_over_by_the_dali_pytorch_plugin(tiny, layout, monkeypatch):
    """Every output (images and labels) is copied into a torch tensor of its own by the
    plugin's feed_ndarray: no batch shares memory with DALI's buffers."""
    from nvidia.dali.plugin import pytorch as plugin

    fed = []
    real = plugin.feed_ndarray

    def recording(dali_tensor, arr, cuda_stream=None):
        fed.append((tuple(dali_tensor.shape()), arr.dtype, arr.device.type, cuda_stream))
        return real(dali_tensor, arr, cuda_stream)

    monkeypatch.setattr(plugin, "feed_ndarray", recording)
    loader = ImageNetLoader(layout.train, 4, device="cpu", seed=0, augment=False,
                            drop_last=True, image_size=SIZE, num_threads=2,
                            channels_last=True)
    batches = list(loader.epoch_batches(0))
    assert len(batches) == 4
    assert fed == [((4, SIZE, SIZE, 3), torch.float32, "cpu", None),
                   ((4, 1), torch.int32, "cpu", None)] * 4
    expected = tiny.expected("train")
    for images, labels in batches:
        files = identify_flat_images(images, expected)
        assert labels.tolist() == [expected[f][0] for f in files]
