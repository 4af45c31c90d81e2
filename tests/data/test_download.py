"""`download=True`: MD5-checked, atomic, and never a network call in tests."""

from __future__ import annotations

import hashlib

import pytest
import torch

from one_fast.data import ChecksumError, CorruptDatasetError, load_dataset
from one_fast.data import cifar as cifar_module
from one_fast.data import download as download_module

from .cifar_files import archive_bytes, make_files


def fake_fetch(payload: bytes, calls: list):
    def fetch(url, dest):
        calls.append(url)
        dest.write(payload)
    return fetch


def test_official_urls_and_checksums():
    assert cifar_module.CIFAR_SPECS["cifar10"].url == (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    assert cifar_module.CIFAR_SPECS["cifar10"].md5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar_module.CIFAR_SPECS["cifar100"].url == (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")
    assert cifar_module.CIFAR_SPECS["cifar100"].md5 == "eb9058c3a382ffc7106e4002c42a8d85"


def test_md5_mismatch_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(download_module, "_fetch", fake_fetch(b"not the archive", calls))
    data_dir = tmp_path / "data"
    with pytest.raises(ChecksumError, match="MD5 mismatch") as info:
        load_dataset("cifar10", data_dir, download=True)
    assert isinstance(info.value, (ValueError, CorruptDatasetError))
    assert hashlib.md5(b"not the archive").hexdigest() in str(info.value)
    assert calls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert list(data_dir.iterdir()) == []


def test_failed_transfer_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(url, dest):
        dest.write(b"partial")
        raise ConnectionResetError("peer went away")
    monkeypatch.setattr(download_module, "_fetch", broken)
    with pytest.raises(OSError, match="could not download .*peer went away"):
        load_dataset("cifar100", tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_verified_download_is_renamed_and_loaded(tmp_path, monkeypatch):
    files, train_x, *_ = make_files("cifar100", 5)
    payload = archive_bytes(files)
    spec = cifar_module.CIFAR_SPECS["cifar100"]
    monkeypatch.setitem(cifar_module.CIFAR_SPECS, "cifar100", cifar_module.CifarSpec(
        **{**spec.__dict__, "md5": hashlib.md5(payload).hexdigest()}))
    calls = []
    monkeypatch.setattr(download_module, "_fetch", fake_fetch(payload, calls))
    ds = load_dataset("cifar100", tmp_path, download=True)
    assert torch.equal(ds.train_images, torch.from_numpy(train_x))
    assert [p.name for p in tmp_path.iterdir()] == ["cifar-100-python.tar.gz"]
    assert (tmp_path / "cifar-100-python.tar.gz").read_bytes() == payload
    load_dataset("cifar100", tmp_path, download=True)  # present now: no second fetch
    assert len(calls) == 1
