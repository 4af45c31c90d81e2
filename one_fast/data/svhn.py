"""SVHN (Street View House Numbers, cropped digits) from the official MATLAB files.

The files sit directly in `data_dir` under their official names (train_32x32.mat,
test_32x32.mat, extra_32x32.mat: the layout torchvision also uses). Each is a MATLAB v5 file
holding ``X``: uint8 (32, 32, 3, N), indexed (row, column, channel, image), and ``y``: (N, 1)
labels 1..10, where 10 means the digit 0. They are read with scipy and checked (shape, dtype,
label range) before anything is returned; labels come out as the digit itself, 0..9.

The `extra` split (531,131 easier images) is added to training when asked, as the ONE authors
do. Sizes as uint8: train 73,257 x 3,072 B = 225 MB, extra 1.63 GB, test 80 MB; with extra the
training split is 1.86 GB, which a GPU holds resident easily (the device loader copies it there
once). Loading it from disk peaks at about twice that in host memory (the parsed file plus its
channel-major copy).

SVHN images are not augmented (no crop, no flip): the ONE authors' SVHN pipeline is
ToTensor + Normalize only (cifar_one.py), and a mirrored digit is not the same digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import ImageDataset, channel_stats
from .download import download_verified
from .errors import CorruptDatasetError, DatasetNotFoundError

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
NUM_CLASSES = 10
# The files store the digit 0 as label 10.
ZERO_LABEL = 10


@dataclass(frozen=True)
class SvhnFile:
    """One official SVHN file: its name, MD5 and number of images."""

    name: str
    md5: str
    count: int

    @property
    def url(self) -> str:
        return SVHN_URL + self.name


# MD5s as published with torchvision.datasets.SVHN; counts from the dataset's page.
SVHN_FILES = {
    "train": SvhnFile("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", 73_257),
    "test": SvhnFile("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", 26_032),
    "extra": SvhnFile("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7", 531_131),
}


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One .mat file → (uint8 (N, 3, 32, 32) contiguous, int64 (N,) digits 0..9)."""
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - scipy is a runtime dependency
        raise ImportError("reading SVHN's .mat files needs scipy: pip install scipy") from e
    try:
        contents = loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # truncated or damaged files raise many different types
        raise CorruptDatasetError(f"{path} is not a readable MATLAB file ({type(e).__name__}: "
                                  f"{e}); delete it and fetch it again (--download)") from e
    if "X" not in contents or "y" not in contents:
        raise CorruptDatasetError(f"{path}: missing variable 'X' or 'y'; not an official SVHN "
                                  "file")
    images, labels = contents["X"], contents["y"]
    if not (images.dtype == np.uint8 and images.ndim == 4 and images.shape[:3] == (32, 32, 3)):
        raise CorruptDatasetError(f"{path}: 'X' must be uint8 (32, 32, 3, N), got {images.dtype} "
                                  f"{images.shape}")
    n = images.shape[3]
    if labels.size != n or labels.ndim > 2 or labels.dtype.kind not in "iuf":
        raise CorruptDatasetError(f"{path}: 'y' must hold {n} labels, got {labels.dtype} "
                                  f"{labels.shape}")
    labels = labels.reshape(-1)
    digits = labels.astype(np.int64)
    if (labels != digits).any() or (digits < 1).any() or (digits > ZERO_LABEL).any():
        raise CorruptDatasetError(f"{path}: labels must be whole numbers in 1..{ZERO_LABEL}")
    digits[digits == ZERO_LABEL] = 0
    # (row, column, channel, image) → (image, channel, row, column), one copy into C order.
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), digits


def _not_found(data_dir: Path, missing: list[SvhnFile]) -> DatasetNotFoundError:
    names = ", ".join(f.name for f in missing)
    urls = ", ".join(f.url for f in missing)
    return DatasetNotFoundError(
        f"svhn not found in {data_dir}: missing {names}. Pass --download (download=True) to "
        f"fetch {urls}, or place the official files there yourself.")


def load_svhn(data_dir: str | Path = "data", download: bool = False, *,
              extra: bool = False) -> ImageDataset:
    """Load SVHN (cropped digits) into uint8 CPU tensors.

    Args:
        data_dir: folder holding train_32x32.mat, test_32x32.mat (and extra_32x32.mat).
        download: fetch the missing official files (each MD5-checked) instead of failing.
        extra: append the 531,131-image extra split to the training split (the ONE authors'
            setting); needs extra_32x32.mat (1.3 GB on disk, 1.63 GB as uint8).

    Returns:
        ImageDataset "svhn": uint8 (N, 3, 32, 32) images, labels 0..9 (the digit), 10 classes;
        train = train (+ extra, in that order), test = test; no augmentation (no crop, no flip);
        mean/std from the training split as used.

    Raises:
        DatasetNotFoundError: a needed file is missing and download is False.
        CorruptDatasetError: a file is truncated, damaged, or has the wrong shapes or labels.
        ChecksumError: a download's MD5 did not match (nothing is left on disk).
    """
    data_dir = Path(data_dir)
    splits = ("train", "extra", "test") if extra else ("train", "test")
    missing = [SVHN_FILES[s] for s in splits if not (data_dir / SVHN_FILES[s].name).is_file()]
    if missing and not download:
        raise _not_found(data_dir, missing)
    for spec in missing:
        download_verified(spec.url, data_dir / spec.name, spec.md5)

    train_parts = [_read_mat(data_dir / SVHN_FILES[s].name) for s in splits[:-1]]
    if len(train_parts) == 1:
        train_images, train_labels = (torch.from_numpy(a) for a in train_parts[0])
    else:
        train_images = torch.from_numpy(np.concatenate([x for x, _ in train_parts]))
        train_labels = torch.from_numpy(np.concatenate([y for _, y in train_parts]))
    del train_parts  # with extra, frees 1.86 GB of per-file copies before the statistics
    test_images, test_labels = (torch.from_numpy(a) for a in _read_mat(data_dir /
                                                                        SVHN_FILES["test"].name))
    mean, std = channel_stats(train_images)
    return ImageDataset("svhn", train_images, train_labels, test_images, test_labels,
                        NUM_CLASSES, mean, std, augment_flip=False, augment_pad=0)
