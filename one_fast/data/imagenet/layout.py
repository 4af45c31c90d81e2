"""The ImageNet folder layout: DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG.

Classes are the class folders sorted by name (the WordNet id, e.g. n01440764), so label i is the
i-th wnid in sorted order -- the convention of torchvision's ImageFolder and of every ImageNet
checkpoint trained with it. A missing or half-prepared layout raises DatasetNotFoundError naming
what is missing and the step that creates it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetNotFoundError
from .devkit import find_class_names

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")  # decoders detect the format from the bytes
PREPARE_COMMAND = "python -m one_fast.prepare_imagenet {root}"
TRAIN_HINT = ("extract ILSVRC2012_img_train.tar into {root}/train and each class archive in it "
              "into its own folder: cd {root}/train && for f in *.tar; do mkdir \"${{f%.tar}}\" "
              "&& tar -xf \"$f\" -C \"${{f%.tar}}\" && rm \"$f\"; done")
VAL_HINT = ("extract ILSVRC2012_img_val.tar into {root}/val, then sort it into class folders "
            "with `" + PREPARE_COMMAND + "` (needs the devkit, ILSVRC2012_devkit_t12.tar.gz, "
            "or Kaggle's LOC_val_solution.csv in {root})")


@dataclass(frozen=True)
class ImageSplit:
    """One split's images: paths relative to `root` and their labels.

    Attributes:
        root: the split folder (DIR/train or DIR/val).
        files: relative paths "<wnid>/<name>", class by class, names sorted within a class.
        labels: int64 (len(files),), the index of each file's wnid in the sorted class list.
    """

    root: Path
    files: tuple[str, ...] = field(repr=False)
    labels: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class ImageNetLayout:
    """A located ImageNet folder.

    Attributes:
        root: DIR.
        wnids: class folder names, sorted; label i is wnids[i].
        class_names: a readable name per class from the devkit (the wnid where none is found).
        train, val: the two splits.
    """

    root: Path
    wnids: tuple[str, ...] = field(repr=False)
    class_names: tuple[str, ...] = field(repr=False)
    train: ImageSplit
    val: ImageSplit

    @property
    def num_classes(self) -> int:
        return len(self.wnids)


def _loose_files(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries
                      if e.is_file() and e.name.lower().endswith(suffixes))


def _class_folders(split: Path) -> list[str]:
    with os.scandir(split) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _check_split_folder(root: Path, name: str) -> list[str]:
    """The class folders of DIR/name, or DatasetNotFoundError explaining how to make them."""
    split = root / name
    hint = (TRAIN_HINT if name == "train" else VAL_HINT).format(root=root)
    if not split.is_dir():
        raise DatasetNotFoundError(f"ImageNet: {split} does not exist; {hint}")
    classes = _class_folders(split)
    loose_images = _loose_files(split, IMAGE_SUFFIXES)
    if name == "train" and _loose_files(split, (".tar",)):
        raise DatasetNotFoundError(f"ImageNet: {split} holds class archives (*.tar) that are "
                                   f"not extracted; {hint}")
    if loose_images:
        state = "partly sorted (an interrupted preparation?)" if classes else "not sorted"
        raise DatasetNotFoundError(
            f"ImageNet: {split} holds {len(loose_images)} images outside class folders "
            f"({_some(loose_images, 2)}): {state}; run `{PREPARE_COMMAND.format(root=root)}` "
            f"(it resumes where it stopped)")
    if not classes:
        raise DatasetNotFoundError(f"ImageNet: {split} has no class folders; {hint}")
    return classes


def _scan_split(split: Path, wnids: tuple[str, ...]) -> ImageSplit:
    files: list[str] = []
    labels: list[np.ndarray] = []
    empty = []
    for label, wnid in enumerate(wnids):
        names = _loose_files(split / wnid, IMAGE_SUFFIXES)
        if not names:
            empty.append(wnid)
        files.extend(f"{wnid}/{n}" for n in names)
        labels.append(np.full(len(names), label, dtype=np.int64))
    if empty:
        raise DatasetNotFoundError(f"ImageNet: class folders without images in {split}: "
                                   f"{_some(empty)} (an incomplete extraction?)")
    return ImageSplit(split, tuple(files), np.concatenate(labels))


def find_imagenet(data_dir: str | os.PathLike) -> ImageNetLayout:
    """Locate and list an ImageNet folder.

    Args:
        data_dir: DIR holding train/<wnid>/ and val/<wnid>/ (any number of classes, the same
            class folders in both splits), and optionally the devkit for class names.

    Returns:
        ImageNetLayout with every image file listed (not opened).

    Raises:
        DatasetNotFoundError: DIR, a split, or class folders are missing, val/ is not sorted
            into class folders, a class folder is empty, or the splits' classes differ; the
            message names what is missing and how to prepare it.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"ImageNet: data directory {root} does not exist; it must hold train/<wnid>/*.JPEG "
            f"and val/<wnid>/*.JPEG (see docs/imagenet.md)")
    train_classes = _check_split_folder(root, "train")
    val_classes = _check_split_folder(root, "val")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        parts = [f"{where} only: {_some(names)}" for where, names in
                 (("train/", only_train), ("val/", only_val)) if names]
        raise DatasetNotFoundError(f"ImageNet: train/ and val/ hold different class folders "
                                   f"({'; '.join(parts)}); both need the same classes")
    wnids = tuple(train_classes)
    names = find_class_names(root)
    class_names = tuple(names.get(w, w) for w in wnids)
    return ImageNetLayout(root, wnids, class_names, _scan_split(root / "train", wnids),
                          _scan_split(root / "val", wnids))
