"""Write tiny CIFAR datasets in the official "python version" layout, for loader tests."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

LAYOUT = {
    # name: (folder, archive, train files, test file, label key, classes)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], "test",
                 b"fine_labels", 100),
}


def _pickle_batch(data: np.ndarray, labels: np.ndarray, label_key: bytes, legacy: bool) -> bytes:
    batch = {b"batch_label": b"tiny", label_key: labels.tolist(), b"data": data,
             b"filenames": [b"x.png"] * len(labels)}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = (labels % 20).tolist()
    raw = pickle.dumps(batch, protocol=2)
    if legacy:  # the official files were pickled by Python 2 with numpy 1's module names
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return raw


def make_files(name: str, per_file: int, seed: int = 0, legacy: bool = True):
    """Return ({relative path: bytes}, train images, train labels, test images, test labels)."""
    folder, _, train_files, test_file, key, classes = LAYOUT[name]
    rng = np.random.default_rng(seed)
    files, parts = {}, {}
    for fname in [*train_files, test_file]:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, per_file)
        files[f"{folder}/{fname}"] = _pickle_batch(data, labels, key, legacy)
        parts[fname] = (data.reshape(-1, 3, 32, 32), labels)
    files[f"{folder}/batches.meta"] = pickle.dumps({b"label_names": []}, protocol=2)
    train_x = np.concatenate([parts[f][0] for f in train_files])
    train_y = np.concatenate([parts[f][1] for f in train_files])
    return files, train_x, train_y, parts[test_file][0], parts[test_file][1]


def write_folder(root: Path, files: dict[str, bytes]) -> None:
    for rel, raw in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)


def archive_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = next(iter(files)).split("/")[0]
        tar.addfile(_dir_info(folder))
        for rel, raw in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info
