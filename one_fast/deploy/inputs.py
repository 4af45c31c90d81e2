"""What a trained network expects as input, and turning image files into such input.

Training feeds the network uint8 images normalised as ``(x / 255 - mean) / std`` per channel
(mean and std of the training split, see :class:`one_fast.data.DeviceLoader`). A deployed model
must be fed the same way, so every exported file and run folder carries an :class:`InputSpec`:
image size, mean, std and the class names where the dataset has them.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data import CIFAR_SPECS, DeviceLoader, ImageDataset
from ..files import atomic_write

if TYPE_CHECKING:  # annotations only
    from ..data.device import ShardLoader
    from ..data.loaders import DatasetInfo

INPUTS_NAME = "inputs.json"  # in a run folder, beside checkpoint.pt
DIGIT_NAMES = tuple(str(d) for d in range(10))
# Where each CIFAR variant keeps its class names: (meta file, key).
_CIFAR_META = {"cifar10": ("batches.meta", "label_names"),
               "cifar100": ("meta", "fine_label_names")}


@dataclass(frozen=True)
class InputSpec:
    """The input a trained network expects.

    Attributes:
        dataset: name of the training dataset.
        num_classes: classes the network tells apart (its outputs per image).
        channels, height, width: shape of one image, (C, H, W).
        mean, std: per-channel statistics (in [0, 1] units) of the training split; inputs are
            ``(pixels / 255 - mean) / std``.
        class_names: one name per class, or None where the dataset has none.
    """

    dataset: str
    num_classes: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record."""
        record = asdict(self)
        record["mean"], record["std"] = list(self.mean), list(self.std)
        if self.class_names is not None:
            record["class_names"] = list(self.class_names)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, object]) -> InputSpec:
        """Inverse of :meth:`to_dict`; a record missing a field is a ValueError naming it."""
        required = ("dataset", "num_classes", "channels", "height", "width", "mean", "std")
        missing = [name for name in required if name not in record]
        if missing:
            raise ValueError(f"input description lacks {', '.join(missing)}")
        names = record.get("class_names")
        return cls(dataset=str(record["dataset"]), num_classes=int(record["num_classes"]),
                   channels=int(record["channels"]),
                   height=int(record["height"]), width=int(record["width"]),
                   mean=tuple(float(v) for v in record["mean"]),
                   std=tuple(float(v) for v in record["std"]),
                   class_names=None if names is None else tuple(str(n) for n in names))

    def class_name(self, index: int) -> str:
        """The name of class ``index``, or the index itself as text."""
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) pixels -> float32 network input, with the training loader's code.

        Raises:
            ValueError: not uint8 images of this spec's shape.
        """
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must be uint8 (N, {self.channels}, {self.height}, "
                             f"{self.width}), got {images.dtype} {tuple(images.shape)}")
        loader = DeviceLoader(images, torch.zeros(len(images), dtype=torch.int64), len(images),
                              device=images.device, mean=self.mean, std=self.std, augment=False,
                              pad=0, flip=False, seed=0, drop_last=False)
        return loader.normalize(loader.images)


def input_spec(data: ImageDataset, data_dir: str | os.PathLike | None = None) -> InputSpec:
    """The :class:`InputSpec` of networks trained on ``data``.

    Args:
        data: the training dataset.
        data_dir: where CIFAR's files are (for its class names); None: no CIFAR names.
    """
    c, h, w = data.image_shape
    return InputSpec(dataset=data.name, num_classes=data.num_classes, channels=c, height=h,
                     width=w, mean=tuple(data.mean), std=tuple(data.std),
                     class_names=class_names(data.name, data_dir))


def loader_input_spec(data: DatasetInfo, loader: ShardLoader,
                      data_dir: str | os.PathLike | None = None) -> InputSpec:
    """The :class:`InputSpec` of networks trained from ``loader`` (what the trainer saves).

    Args:
        data: the trainer's description of the dataset (name, class count, and ImageNet's
            class names: the devkit's words, or the wnids without a devkit).
        loader: one of the run's loaders (image shape, normalisation statistics).
        data_dir: where CIFAR's files are (for its class names); None: no CIFAR names.
    """
    c, h, w = loader.image_shape
    names = data.class_names or class_names(data.name, data_dir)
    return InputSpec(dataset=data.name, num_classes=data.num_classes, channels=c, height=h,
                     width=w, mean=tuple(loader.mean), std=tuple(loader.std), class_names=names)


def save_input_spec(run_dir: str | os.PathLike, spec: InputSpec) -> Path:
    """Write ``run_dir/inputs.json`` atomically (what predict and export read)."""
    path = Path(run_dir) / INPUTS_NAME
    text = json.dumps(spec.to_dict(), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def read_input_spec(run_dir: str | os.PathLike) -> InputSpec | None:
    """``run_dir/inputs.json`` if the run has one, else None."""
    path = Path(run_dir) / INPUTS_NAME
    if not path.is_file():
        return None
    try:
        return InputSpec.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a valid input description: {err}") from err


# --------------------------------------------------------------------------------------------
# class names


class _PlainUnpickler(pickle.Unpickler):
    """Reads pickles of plain containers and strings only (CIFAR's meta files)."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR meta file")


def _cifar_meta_bytes(name: str, data_dir: Path) -> bytes | None:
    spec = CIFAR_SPECS[name]
    meta_file = _CIFAR_META[name][0]
    extracted = data_dir / spec.folder / meta_file
    if extracted.is_file():
        return extracted.read_bytes()
    archive = data_dir / spec.archive
    if archive.is_file():
        with tarfile.open(archive, "r:gz") as tar:
            try:
                member = tar.extractfile(f"{spec.folder}/{meta_file}")
            except KeyError:
                return None
            return member.read() if member is not None else None
    return None


def class_names(dataset: str, data_dir: str | os.PathLike | None = None) -> tuple[str, ...] | None:
    """Class names of ``dataset`` where known: the digits 0-9; CIFAR's from its meta file.

    Args:
        dataset: dataset name.
        data_dir: folder holding the CIFAR folder or archive (None: CIFAR names unknown).

    Returns:
        One name per class, or None (SVHN's labels are its digits, but none is stored).
    """
    if dataset == "digits":
        return DIGIT_NAMES
    if dataset not in _CIFAR_META or data_dir is None:
        return None
    try:
        raw = _cifar_meta_bytes(dataset, Path(data_dir))
        if raw is None:
            return None
        meta = _PlainUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (OSError, tarfile.TarError, pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"the {dataset} meta file in {data_dir} is unreadable: {err}") from err
    key = _CIFAR_META[dataset][1]
    names = meta.get(key.encode(), meta.get(key)) if isinstance(meta, dict) else None
    if not isinstance(names, list):
        raise ValueError(f"the {dataset} meta file in {data_dir} has no {key!r} list")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


# --------------------------------------------------------------------------------------------
# reading inputs


def _image_pixels(path: Path, spec: InputSpec, resize: bool) -> np.ndarray:
    """One image file -> uint8 (C, H, W) of the spec's shape."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("reading image files needs Pillow: pip install pillow") from err
    try:
        with Image.open(path) as image:
            image.load()
            mode, size = image.mode, image.size
            if mode == "L":
                image = image.convert("RGB")  # grey -> the same value in every channel
            elif mode != "RGB":
                raise ValueError(f"{path}: image mode {mode} is not supported (grey 'L' or 'RGB' "
                                 f"expected; convert it first, e.g. image.convert('RGB'))")
            if size != (spec.width, spec.height):
                if not resize:
                    raise ValueError(
                        f"{path}: image is {size[0]}x{size[1]} (WxH), the network was trained "
                        f"on {spec.width}x{spec.height} {spec.dataset} images; pass --resize to "
                        f"resize it (bilinear)")
                image = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err
    return pixels.transpose(2, 0, 1)


FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _float_batch(path: Path, array: np.ndarray, spec: InputSpec,
                 normalized: bool) -> torch.Tensor:
    """Float values -> network input: pixels in [0, 1] normalised here, or (``normalized``)
    values already normalised with the run's mean and std, taken as they are."""
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{path}: holds NaN or infinite values")
    if normalized:
        return x
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{path}: float values must be pixels in [0, 1] (as torchvision's ToTensor gives), "
            f"found values in [{low:g}, {high:g}]; divide 0-255 pixels by 255 or save them as "
            f"uint8, or pass --normalized for values already normalised with the run's mean "
            f"and std")
    shape = (1, spec.channels, 1, 1)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(shape)
    std = torch.tensor(spec.std, dtype=torch.float32).view(shape)
    return (x - mean) / std


def _npy_batch(path: Path, spec: InputSpec, normalized: bool) -> torch.Tensor:
    """A .npy batch -> float32 network input (N, C, H, W)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npy array ({err})") from err
    c, h, w = spec.image_shape
    if array.ndim == 3:
        array = array[None]
    if array.ndim == 4 and array.shape[1:] == (h, w, c) and array.shape[1:] != (c, h, w):
        array = array.transpose(0, 3, 1, 2)  # (N, H, W, C) pixels
    if array.ndim != 4 or array.shape[1:] != (c, h, w):
        raise ValueError(f"{path}: expected a batch of shape (N, {c}, {h}, {w}) or "
                         f"(N, {h}, {w}, {c}), got {array.shape}")
    if array.dtype == np.uint8:
        if normalized:
            raise ValueError(f"{path}: uint8 values are 0-255 pixels, not normalised values; "
                             f"drop --normalized (they are normalised here)")
        return spec.normalize(torch.from_numpy(np.ascontiguousarray(array)))
    if array.dtype in FLOAT_DTYPES:
        return _float_batch(path, array, spec, normalized)
    raise ValueError(f"{path}: dtype {array.dtype} not supported: uint8 pixels (0-255), float "
                     f"pixels in [0, 1], or with --normalized float values already normalised "
                     f"with the run's mean and std")


def read_inputs(paths: Sequence[str | os.PathLike], spec: InputSpec, resize: bool = False,
                normalized: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Load image files and .npy batches as one normalised float32 batch.

    Args:
        paths: PNG/JPEG (anything Pillow reads) files, grey or RGB, of the training image size,
            and/or ``.npy`` batches (N, C, H, W) or (N, H, W, C): uint8 pixels (0-255) or float
            pixels in [0, 1] (torchvision's ``ToTensor`` convention), both normalised here.
        spec: the network's input description.
        resize: resize images of another size (bilinear) instead of refusing them.
        normalized: the float ``.npy`` batches are already normalised with ``spec``'s mean and
            std: taken as they are (uint8 batches are then refused).

    Returns:
        (batch (N, C, H, W) float32, one label per row: the file name, with ``[k]`` for the
        rows of a .npy batch).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: unreadable file, wrong size, mode, shape or dtype, or float pixels outside
            [0, 1] (naming the file).
    """
    if not paths:
        raise ValueError("no images given")
    parts: list[torch.Tensor] = []
    labels: list[str] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            parts.append(spec.normalize(torch.from_numpy(np.stack(pending))))
            pending.clear()

    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no such input file: {path}")
        if path.suffix.lower() == ".npy":
            flush()
            batch = _npy_batch(path, spec, normalized)
            parts.append(batch)
            labels.extend(f"{path.name}[{k}]" for k in range(len(batch)))
        else:
            pending.append(_image_pixels(path, spec, resize))
            labels.append(path.name)
    flush()
    return torch.cat(parts), labels
