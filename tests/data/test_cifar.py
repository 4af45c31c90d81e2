"""CIFAR loader against tiny files in the official format: folder, archive, and bad inputs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from one_fast.data import (
    CorruptDatasetError,
    DatasetNotFoundError,
    channel_stats,
    load_cifar,
    load_dataset,
)

from .cifar_files import LAYOUT, archive_bytes, make_files, write_folder

PER_FILE = 7


def check_loaded(ds, name, expected):
    _, train_x, train_y, test_x, test_y = expected
    n_train = PER_FILE * len(LAYOUT[name][2])
    assert ds.name == name and ds.num_classes == LAYOUT[name][5]
    assert ds.train_images.shape == (n_train, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.train_labels.shape == (n_train,) and ds.train_labels.dtype == torch.int64
    assert ds.test_images.shape == (PER_FILE, 3, 32, 32)
    # Files are concatenated in official order, each row reshaped (3, 32, 32) channel-major.
    assert torch.equal(ds.train_images, torch.from_numpy(train_x))
    assert torch.equal(ds.train_labels, torch.from_numpy(train_y))
    assert torch.equal(ds.test_images, torch.from_numpy(test_x))
    assert torch.equal(ds.test_labels, torch.from_numpy(test_y))
    assert ds.augment_flip and ds.augment_pad == 4
    assert ds.mean == channel_stats(ds.train_images)[0]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("legacy", [True, False], ids=["numpy1-names", "numpy2-names"])
def test_loads_extracted_folder(tmp_path, name, legacy):
    expected = make_files(name, PER_FILE, legacy=legacy)
    write_folder(tmp_path, expected[0])
    check_loaded(load_dataset(name, tmp_path), name, expected)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_loads_archive_without_extracting(tmp_path, name):
    expected = make_files(name, PER_FILE, seed=1)
    (tmp_path / LAYOUT[name][1]).write_bytes(archive_bytes(expected[0]))
    check_loaded(load_cifar(name, tmp_path), name, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAYOUT[name][1]]


def test_incomplete_folder_falls_back_to_archive(tmp_path):
    expected = make_files("cifar10", PER_FILE, seed=2)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(archive_bytes(expected[0]))
    write_folder(tmp_path, {"cifar-10-batches-py/data_batch_1": b"partial copy"})
    check_loaded(load_cifar("cifar10", tmp_path), "cifar10", expected)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_files_name_what_is_expected(tmp_path, name):
    folder, archive, train_files, test_file, _, _ = LAYOUT[name]
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for expected in (folder, archive, *train_files, test_file, "--download", str(tmp_path)):
        assert expected in message


def test_partial_folder_names_the_missing_files(tmp_path):
    files = make_files("cifar10", 2)[0]
    files.pop("cifar-10-batches-py/data_batch_3")
    files.pop("cifar-10-batches-py/test_batch")
    write_folder(tmp_path, files)
    with pytest.raises(DatasetNotFoundError, match="lacks data_batch_3, test_batch"):
        load_cifar("cifar10", tmp_path)


@pytest.mark.parametrize("cut", [0.3, 0.9, 0.999])
def test_truncated_archive_is_a_clear_error(tmp_path, cut):
    raw = archive_bytes(make_files("cifar100", PER_FILE)[0])
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(CorruptDatasetError, match="cifar-100-python.tar.gz"):
        load_dataset("cifar100", tmp_path)


def test_damaged_archive_is_a_clear_error(tmp_path):
    raw = bytearray(archive_bytes(make_files("cifar10", PER_FILE)[0]))
    # Random pixels are stored uncompressed, so zeroed bytes still inflate: only gzip's CRC
    # (checked once the whole stream is read) can tell the data were damaged.
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(bytes(raw))
    with pytest.raises(CorruptDatasetError, match="CRC check failed"):
        load_dataset("cifar10", tmp_path)


def test_not_a_gzip_file_is_a_clear_error(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CorruptDatasetError, match="truncated or not a valid .tar.gz"):
        load_dataset("cifar10", tmp_path)


def test_archive_missing_a_member_is_a_clear_error(tmp_path):
    files = make_files("cifar10", PER_FILE)[0]
    files.pop("cifar-10-batches-py/data_batch_5")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(archive_bytes(files))
    with pytest.raises(CorruptDatasetError, match="lacks cifar-10-batches-py/data_batch_5"):
        load_dataset("cifar10", tmp_path)


def _write_with(tmp_path, name, member, raw):
    files = make_files(name, PER_FILE)[0]
    files[f"{LAYOUT[name][0]}/{member}"] = raw
    write_folder(tmp_path, files)


def test_truncated_pickle_is_a_clear_error(tmp_path):
    good = make_files("cifar10", PER_FILE)[0]["cifar-10-batches-py/data_batch_2"]
    _write_with(tmp_path, "cifar10", "data_batch_2", good[: len(good) // 2])
    with pytest.raises(CorruptDatasetError, match="data_batch_2 is not a readable CIFAR pickle"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("batch, match", [
    ({b"data": np.zeros((3, 3072), np.float32), b"labels": [0, 1, 2]}, "uint8"),
    ({b"data": np.zeros((3, 1024), np.uint8), b"labels": [0, 1, 2]}, r"\(N, 3072\)"),
    ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, "must be 3 integers"),
    ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 10]}, r"outside \[0, 10\)"),
    ({b"data": np.zeros((3, 3072), np.uint8)}, "missing key"),
    ([1, 2, 3], "expected a dict"),
])
def test_wrong_contents_are_clear_errors(tmp_path, batch, match):
    _write_with(tmp_path, "cifar10", "test_batch", pickle.dumps(batch, protocol=2))
    with pytest.raises(CorruptDatasetError, match=match):
        load_dataset("cifar10", tmp_path)


class _Exploit:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickles_cannot_run_code(tmp_path, capsys):
    _write_with(tmp_path, "cifar10", "data_batch_1", pickle.dumps(_Exploit(), protocol=2))
    with pytest.raises(CorruptDatasetError, match=r"print in a CIFAR pickle"):
        load_dataset("cifar10", tmp_path)
    assert "pickle code ran" not in capsys.readouterr().out
