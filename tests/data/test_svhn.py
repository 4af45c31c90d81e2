"""SVHN loader against tiny .mat files in the official layout: splits, labels, bad inputs,
downloads, and the absence of augmentation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from one_fast.data import (
    ChecksumError,
    CorruptDatasetError,
    DatasetNotFoundError,
    channel_stats,
    load_dataset,
    load_svhn,
    loaders_for,
)
from one_fast.data import download as download_module
from one_fast.data import svhn as svhn_module

from .svhn_files import FILE_NAMES, make_split, mat_bytes, write_splits


def test_official_names_urls_and_checksums():
    files = svhn_module.SVHN_FILES
    assert {s: f.url for s, f in files.items()} == {
        s: f"http://ufldl.stanford.edu/housenumbers/{n}" for s, n in FILE_NAMES.items()}
    assert files["train"].md5 == "e26dedcc434d2e4c54c9b2d4a06d8373"
    assert files["test"].md5 == "eb5a983be6a315427106f1b164d9cef3"
    assert files["extra"].md5 == "a93ce644f1a588dc4d68dda5feec44a7"
    assert (files["train"].count, files["test"].count, files["extra"].count) == (
        73_257, 26_032, 531_131)


def test_loads_train_and_test(tmp_path):
    written = write_splits(tmp_path, {"train": 23, "test": 11})
    ds = load_dataset("svhn", tmp_path)
    assert ds.name == "svhn" and ds.num_classes == 10 and ds.image_shape == (3, 32, 32)
    for split, images, labels in (("train", ds.train_images, ds.train_labels),
                                  ("test", ds.test_images, ds.test_labels)):
        want_x, want_y = written[split]
        assert images.dtype == torch.uint8 and images.is_contiguous()
        assert torch.equal(images, torch.from_numpy(want_x))
        assert labels.dtype == torch.int64
        assert torch.equal(labels, torch.from_numpy(want_y))
    assert (ds.train_labels == 0).any()  # stored as 10 in the file
    assert (ds.mean, ds.std) == channel_stats(ds.train_images)
    assert not ds.augment_flip and ds.augment_pad == 0


def test_label_ten_is_digit_zero_and_pixels_keep_their_place(tmp_path):
    """Hand-built file, independent of the test helper's transposition: one bright pixel at
    (row 2, column 5) of the green channel of image 1, and labels written as the file has them."""
    x = np.zeros((32, 32, 3, 2), dtype=np.uint8)
    x[2, 5, 1, 1] = 200
    y = np.array([[10], [7]], dtype=np.uint8)
    for split in ("train", "test"):
        (tmp_path / FILE_NAMES[split]).write_bytes(
            mat_bytes(np.zeros((2, 3, 32, 32), np.uint8), np.zeros(2), X=x, y=y))
    ds = load_svhn(tmp_path)
    assert ds.train_labels.tolist() == [0, 7]
    assert ds.train_images[1, 1, 2, 5] == 200
    assert int(ds.train_images.sum()) == 200


def test_extra_is_appended_to_training(tmp_path):
    written = write_splits(tmp_path, {"train": 12, "test": 5, "extra": 17})
    ds = load_svhn(tmp_path, extra=True)
    train_x, train_y = written["train"]
    extra_x, extra_y = written["extra"]
    assert torch.equal(ds.train_images, torch.from_numpy(np.concatenate([train_x, extra_x])))
    assert torch.equal(ds.train_labels, torch.from_numpy(np.concatenate([train_y, extra_y])))
    assert ds.mean == channel_stats(ds.train_images)[0]
    assert len(load_dataset("svhn", tmp_path, svhn_extra=True).train_labels) == 29
    assert len(load_dataset("svhn", tmp_path).train_labels) == 12


def test_missing_files_name_themselves_and_the_flag(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"train_32x32\.mat, test_32x32\.mat.*"
                                                    r"--download"):
        load_dataset("svhn", tmp_path)
    write_splits(tmp_path, {"train": 3, "test": 3})
    load_svhn(tmp_path)  # extra is not needed unless asked for
    with pytest.raises(DatasetNotFoundError, match=r"missing extra_32x32\.mat\. .*--download") \
            as info:
        load_svhn(tmp_path, extra=True)
    assert "train_32x32" not in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_file_is_corrupt(tmp_path, damage):
    write_splits(tmp_path, {"train": 9, "test": 4})
    path = tmp_path / FILE_NAMES["test"]
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"\x01 not matlab" * 50,
                      "empty": b""}[damage])
    with pytest.raises(CorruptDatasetError, match=r"test_32x32\.mat is not a readable MATLAB "
                                                  r"file.*--download"):
        load_svhn(tmp_path)


def _bad_variables():
    images, digits = make_split(4, seed=3)
    good_y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    x = np.ascontiguousarray(images.transpose(2, 3, 1, 0))
    return {
        "X float": ({"X": x.astype(np.float32)}, "'X' must be uint8 \\(32, 32, 3, N\\)"),
        "X grey": ({"X": x[:, :, :1]}, "'X' must be uint8 \\(32, 32, 3, N\\)"),
        "X 28px": ({"X": x[:28, :28]}, "'X' must be uint8 \\(32, 32, 3, N\\)"),
        "y short": ({"y": good_y[:3]}, "'y' must hold 4 labels"),
        "label 0": ({"y": np.where(good_y == 10, 0, good_y)}, "labels must be whole numbers"),
        "label 11": ({"y": good_y + 1}, "labels must be whole numbers in 1..10"),
        "label 2.5": ({"y": good_y + 0.5}, "labels must be whole numbers"),
        "no y": ({"y": None, "Y": good_y}, "missing variable 'X' or 'y'"),
    }, images, digits


@pytest.mark.parametrize("case", list(_bad_variables()[0]))
def test_wrong_contents_are_corrupt(tmp_path, case):
    cases, images, digits = _bad_variables()
    overrides, message = cases[case]
    write_splits(tmp_path, {"test": 4})
    (tmp_path / FILE_NAMES["train"]).write_bytes(mat_bytes(images, digits, **overrides))
    with pytest.raises(CorruptDatasetError, match=message):
        load_svhn(tmp_path)


def test_float_labels_holding_whole_numbers_are_accepted(tmp_path):
    images, digits = make_split(10, seed=5)
    y = np.where(digits == 0, 10, digits).astype(np.float64).reshape(-1, 1)
    for split in ("train", "test"):
        (tmp_path / FILE_NAMES[split]).write_bytes(mat_bytes(images, digits, y=y))
    assert torch.equal(load_svhn(tmp_path).train_labels, torch.from_numpy(digits))


def _serve(files: dict[str, bytes], calls: list):
    def fetch(url, dest):
        calls.append(url)
        dest.write(files[url.rsplit("/", 1)[1]])
    return fetch


def _checksummed(monkeypatch, files: dict[str, bytes]) -> None:
    """Make SVHN_FILES expect the MD5s of the tiny files (the official ones are 0.2-1.3 GB)."""
    specs = {split: svhn_module.SvhnFile(spec.name, hashlib.md5(files[spec.name]).hexdigest(),
                                         spec.count)
             for split, spec in svhn_module.SVHN_FILES.items()}
    monkeypatch.setattr(svhn_module, "SVHN_FILES", specs)


def test_download_fetches_only_missing_files(tmp_path, monkeypatch):
    source = tmp_path / "source"
    written = write_splits(source, {"train": 8, "test": 6, "extra": 5})
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    _checksummed(monkeypatch, files)
    calls: list[str] = []
    monkeypatch.setattr(download_module, "_fetch", _serve(files, calls))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / FILE_NAMES["train"]).write_bytes(files[FILE_NAMES["train"]])

    ds = load_dataset("svhn", data_dir, download=True, svhn_extra=True)
    base = "http://ufldl.stanford.edu/housenumbers/"
    assert calls == [base + "extra_32x32.mat", base + "test_32x32.mat"]
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(FILE_NAMES.values())
    assert torch.equal(ds.test_images, torch.from_numpy(written["test"][0]))
    assert len(ds.train_labels) == 13
    load_svhn(data_dir, download=True, extra=True)  # everything present: no further download
    assert len(calls) == 2


def test_download_with_wrong_md5_leaves_nothing(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(download_module, "_fetch",
                        _serve({n: b"not a mat file" for n in FILE_NAMES.values()}, calls))
    with pytest.raises(ChecksumError, match="MD5 mismatch .*train_32x32.mat"):
        load_svhn(tmp_path, download=True)
    assert calls == ["http://ufldl.stanford.edu/housenumbers/train_32x32.mat"]
    assert list(tmp_path.iterdir()) == []


def test_training_batches_are_not_augmented(tmp_path):
    write_splits(tmp_path, {"train": 16, "test": 4})
    ds = load_svhn(tmp_path)
    train, _ = loaders_for(ds, 16, device="cpu", seed=0)
    (images, labels), = list(train.epoch_batches(3))
    originals = train.normalize(ds.train_images)
    # Every batch image is exactly one of the normalised originals (random pixels: a crop
    # shift or a flip would match none), each appears once, with its own label.
    matches = (images[:, None] == originals[None]).flatten(2).all(2)  # (batch, N)
    assert matches.sum(1).tolist() == [1] * 16
    assert torch.equal(ds.train_labels[matches.int().argmax(1)], labels)
    assert sorted(matches.int().argmax(1).tolist()) == list(range(16))
