"""CIFAR-10 / CIFAR-100 from the official "python version" archives.

Accepted in `data_dir`: the extracted folder (cifar-10-batches-py/, cifar-100-python/) or the
archive itself (cifar-10-python.tar.gz, cifar-100-python.tar.gz), which is read member by member
straight from the gzip stream; nothing is extracted to disk. The pickles are opened with a
restricted unpickler that only rebuilds numpy arrays and plain containers, so a tampered file
cannot run code. Every file is checked (shape, dtype, label range) before anything is returned.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import ImageDataset, channel_stats
from .download import download_verified
from .errors import CorruptDatasetError, DatasetNotFoundError


@dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR variant lives and how its pickles are laid out."""

    folder: str
    archive: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    num_classes: int

    @property
    def url(self) -> str:
        return f"https://www.cs.toronto.edu/~kriz/{self.archive}"


CIFAR_SPECS = {
    "cifar10": CifarSpec("cifar-10-batches-py", "cifar-10-python.tar.gz",
                         "c58f30108f718f92721af3b95e74349a",
                         tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                         b"labels", 10),
    "cifar100": CifarSpec("cifar-100-python", "cifar-100-python.tar.gz",
                          "eb9058c3a382ffc7106e4002c42a8d85", ("train",), "test",
                          b"fine_labels", 100),
}

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED_GLOBALS = {
    *((m, "_reconstruct") for m in _NUMPY_CORE),
    *((m, "scalar") for m in _NUMPY_CORE),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except what a pickled numpy array needs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR pickle")
        return super().find_class(module, name)


def _parse_batch(raw: bytes, where: str, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch → (uint8 (N, 3, 32, 32), int64 (N,)), or CorruptDatasetError."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # truncated or damaged pickles raise many different types
        raise CorruptDatasetError(f"{where} is not a readable CIFAR pickle: {e}") from e
    if not isinstance(batch, dict):
        raise CorruptDatasetError(f"{where}: expected a dict, got {type(batch).__name__}")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
    if b"data" not in batch or spec.label_key not in batch:
        raise CorruptDatasetError(f"{where}: missing key b'data' or {spec.label_key!r}")
    data, labels = batch[b"data"], np.asarray(batch[spec.label_key])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        raise CorruptDatasetError(f"{where}: b'data' must be uint8 (N, 3072), got "
                                  f"{getattr(data, 'dtype', type(data).__name__)} {shape}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise CorruptDatasetError(f"{where}: {spec.label_key!r} must be {data.shape[0]} integers, "
                                  f"got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise CorruptDatasetError(f"{where}: labels outside [0, {spec.num_classes})")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_folder(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


def _read_archive(archive: Path, folder: str, names: tuple[str, ...]) -> dict[str, bytes]:
    """Read the wanted members in one sequential pass over the gzip stream."""
    wanted = {f"{folder}/{name}": name for name in names}
    found: dict[str, bytes] = {}
    try:
        with gzip.open(archive, "rb") as stream:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    key = member.name.removeprefix("./")
                    if key in wanted and member.isfile():
                        found[wanted[key]] = tar.extractfile(member).read()
            while stream.read(1 << 20):  # drain to the end so gzip verifies its CRC and length
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise CorruptDatasetError(f"{archive} is truncated or not a valid .tar.gz ({e}); delete "
                                  "it and fetch it again (--download)") from e
    missing = [f"{folder}/{n}" for n in names if n not in found]
    if missing:
        raise CorruptDatasetError(f"{archive} lacks {', '.join(missing)}; it is incomplete or not "
                                  "the official archive")
    return found


def _not_found(spec: CifarSpec, data_dir: Path, name: str) -> DatasetNotFoundError:
    folder = data_dir / spec.folder
    files = ", ".join((*spec.train_files, spec.test_file))
    missing = ""
    if folder.is_dir():
        absent = [n for n in (*spec.train_files, spec.test_file) if not (folder / n).is_file()]
        missing = f" (the folder exists but lacks {', '.join(absent)})"
    return DatasetNotFoundError(
        f"{name} not found in {data_dir}: expected the extracted folder {folder}/ holding "
        f"{files}{missing}, or the archive {data_dir / spec.archive}. Pass --download "
        f"(download=True) to fetch {spec.url}, or place either there yourself.")


def load_cifar(name: str, data_dir: str | Path = "data", download: bool = False) -> ImageDataset:
    """Load CIFAR-10 or CIFAR-100 into uint8 CPU tensors.

    Args:
        name: "cifar10" or "cifar100".
        data_dir: folder holding the extracted folder or the .tar.gz.
        download: fetch the official archive (MD5-checked) when neither is present.

    Returns:
        ImageDataset with uint8 (N, 3, 32, 32) images (50k train / 10k test for the official
        files), flips and 4-pixel crops as augmentation defaults.

    Raises:
        DatasetNotFoundError: nothing usable in data_dir and download is False.
        CorruptDatasetError: an archive or pickle is truncated, damaged or has wrong shapes.
        ChecksumError: a download's MD5 did not match (nothing is left on disk).
    """
    if name not in CIFAR_SPECS:
        raise ValueError(f"unknown CIFAR variant {name!r}; choose one of {sorted(CIFAR_SPECS)}")
    spec = CIFAR_SPECS[name]
    data_dir = Path(data_dir)
    names = (*spec.train_files, spec.test_file)
    folder, archive = data_dir / spec.folder, data_dir / spec.archive

    if all((folder / n).is_file() for n in names):
        raw, source = _read_folder(folder, names), folder
    else:
        if not archive.is_file():
            if not download:
                raise _not_found(spec, data_dir, name)
            try:
                download_verified(spec.url, archive, spec.md5)
            except OSError as e:
                raise OSError(f"--download: {e}") from None
        raw, source = _read_archive(archive, spec.folder, names), archive

    parts = {n: _parse_batch(raw[n], f"{source}:{n}", spec) for n in names}
    train = [parts[n] for n in spec.train_files]
    train_images = torch.from_numpy(np.concatenate([x for x, _ in train]))
    train_labels = torch.from_numpy(np.concatenate([y for _, y in train]))
    # np.array copies: unpickled arrays may be read-only views of the file's bytes.
    test_images, test_labels = (torch.from_numpy(np.array(a)) for a in parts[spec.test_file])
    mean, std = channel_stats(train_images)
    return ImageDataset(name, train_images, train_labels, test_images, test_labels,
                        spec.num_classes, mean, std, augment_flip=True, augment_pad=4)
