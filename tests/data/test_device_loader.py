"""DeviceLoader: fixed shapes, sampling without replacement, shards, exact resume, evaluation."""

from __future__ import annotations

import pytest
import torch

from one_fast.data import DeviceLoader, load_dataset, loaders_for, shard_indices

MEAN, STD = (0.5, 0.25, 0.75), (0.2, 0.3, 0.4)


def make_data(n=103, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return images, torch.arange(n)  # label = index: batches reveal which images they hold


def loader(images, labels, batch=16, **kw):
    args = dict(device="cpu", mean=MEAN, std=STD, augment=True, pad=2, flip=True, seed=7)
    return DeviceLoader(images, labels, batch, **{**args, **kw})


def normalized(images_u8):
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images_u8.float() / 255 - mean) / std


def test_fixed_shapes_and_drop_last():
    images, labels = make_data(103)
    train = loader(images, labels, batch=16)
    batches = list(train.epoch_batches(0))
    assert len(train) == train.steps_per_epoch == 6 == len(batches)  # 103 // 16, 7 dropped
    for x, y in batches:
        assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32
        assert y.shape == (16,) and y.dtype == torch.int64


def test_each_image_at_most_once_per_epoch():
    images, labels = make_data(103)
    train = loader(images, labels, batch=16, augment=False)
    for epoch in range(3):
        seen = torch.cat([y for _, y in train.epoch_batches(epoch)])
        assert len(seen) == 96 and len(set(seen.tolist())) == 96
        for x, y in train.epoch_batches(epoch):  # unaugmented batches are the images named
            torch.testing.assert_close(x, normalized(images[y]), atol=1e-5, rtol=0)


def test_augmented_batches_are_crops_of_the_labelled_images():
    images, labels = make_data(40)
    train = loader(images, labels, batch=8, pad=2, flip=False)
    for x, y in train.epoch_batches(1):
        raw = torch.round((x * torch.tensor(STD).view(1, 3, 1, 1)
                           + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255)
        for k in range(len(y)):
            source = torch.nn.functional.pad(images[y[k]].float(), (2, 2, 2, 2))
            assert any(torch.equal(raw[k], source[:, dy:dy + 8, dx:dx + 8])
                       for dy in range(5) for dx in range(5))


def test_same_epoch_same_batches_across_restarts():
    images, labels = make_data(103)
    first = list(loader(images, labels).epoch_batches(3))
    restarted = loader(images, labels)  # a new process after a resume builds a new loader
    again = list(restarted.epoch_batches(3))
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = list(restarted.epoch_batches(4))
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in other]))
    reseeded = list(loader(images, labels, seed=8).epoch_batches(3))
    assert not torch.equal(first[0][0], reseeded[0][0])


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_equal_and_fixed(world_size):
    images, labels = make_data(103)
    ranks = [loader(images, labels, rank=r, world_size=world_size) for r in range(world_size)]
    shards = [set(r.indices.tolist()) for r in ranks]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == 103 // world_size
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not shards[a] & shards[b]
        seen = torch.cat([y for _, y in ranks[a].epoch_batches(0)])
        assert set(seen.tolist()) <= shards[a]
        assert len(ranks[a]) == (103 // world_size) // 16
    assert torch.equal(ranks[1].indices, loader(images, labels, rank=1,
                                                world_size=world_size).indices)
    # Ranks draw different randomness in the same epoch.
    assert not torch.equal(next(ranks[0].epoch_batches(0))[0], next(ranks[1].epoch_batches(0))[0])


def test_eval_covers_the_test_set_once_in_order():
    images, labels = make_data(50)
    test = loader(images, labels, batch=16, augment=False, drop_last=False)
    batches = list(test.eval_batches())
    assert [len(y) for _, y in batches] == [16, 16, 16, 2] and len(test) == 4
    assert torch.equal(torch.cat([y for _, y in batches]), labels)
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), normalized(images),
                               atol=1e-5, rtol=0)


def test_sharded_eval_covers_every_image_once():
    images, labels = make_data(50)
    seen = torch.cat([y for r in range(3) for _, y in
                      loader(images, labels, rank=r, world_size=3, drop_last=False).eval_batches()])
    assert sorted(seen.tolist()) == list(range(50))


def test_shard_indices_contract():
    assert torch.equal(shard_indices(10, 0, 1, seed=3, equal=True), torch.arange(10))
    with pytest.raises(ValueError, match="rank"):
        shard_indices(10, 2, 2, seed=0, equal=True)


def test_normalised_training_split_is_standardised():
    ds = load_dataset("synthetic", synthetic_classes=5, synthetic_train=512, synthetic_test=8)
    train = DeviceLoader(ds.train_images, ds.train_labels, 512, device="cpu", mean=ds.mean,
                         std=ds.std, augment=False, pad=0, flip=False, seed=0)
    x = torch.cat([x for x, _ in train.epoch_batches(0)]).double()
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), unbiased=False),
                               torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_and_channels_last(dtype):
    images, labels = make_data(32)
    train = loader(images, labels, batch=8, channels_last=True, dtype=dtype)
    x, _ = next(train.epoch_batches(0))
    assert x.dtype == dtype and x.is_contiguous(memory_format=torch.channels_last)
    ref = loader(images, labels, batch=8)
    torch.testing.assert_close(x.float(), next(ref.epoch_batches(0))[0],
                               atol=0.02 if dtype == torch.bfloat16 else 1e-6, rtol=0.01)


def test_loaders_for_uses_dataset_defaults():
    ds = load_dataset("digits")
    train, test = loaders_for(ds, 64, device="cpu", seed=0, eval_batch_size=100)
    assert (train.pad, train.flip, train.augment) == (2, False, True)
    assert len(train) == 1437 // 64 and len(test) == 4 and not test.augment
    assert sum(len(y) for _, y in test.eval_batches()) == 360


@pytest.mark.parametrize("kw, match", [
    (dict(batch=200), "fewer than batch_size"),
    (dict(mean=(0.5,)), "mean and std"),
    (dict(std=(0.2, 0.0, 0.1)), "std > 0"),
    (dict(dtype=torch.int32), "floating"),
])
def test_bad_arguments(kw, match):
    images, labels = make_data(40)
    with pytest.raises(ValueError, match=match):
        loader(images, labels, **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loader_is_resident_and_deterministic():
    images, labels = make_data(300, size=32)
    a = loader(images, labels, batch=64, device="cuda", channels_last=True, dtype=torch.bfloat16)
    assert a.images.is_cuda and a.images.dtype == torch.uint8
    first = list(a.epoch_batches(2))
    again = list(loader(images, labels, batch=64, device="cuda", channels_last=True,
                        dtype=torch.bfloat16).epoch_batches(2))
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert x1.is_cuda and x1.shape == (64, 3, 32, 32) and x1.dtype == torch.bfloat16
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    seen = torch.cat([y for _, y in first]).cpu()
    assert len(set(seen.tolist())) == len(seen) == 256
