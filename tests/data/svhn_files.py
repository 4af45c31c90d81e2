"""Write tiny SVHN files in the official MATLAB layout, for loader tests.

Official layout (MATLAB v5, compressed): ``X`` uint8 (32, 32, 3, N) indexed (row, column,
channel, image); ``y`` uint8 (N, 1) with labels 1..10, 10 standing for the digit 0.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from scipy.io import savemat

FILE_NAMES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (N, 3, 32, 32) and digits 0..9 (every digit present when n >= 10)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    digits = rng.permutation(np.arange(n) % 10)
    return images, digits


def mat_bytes(images: np.ndarray, digits: np.ndarray, **overrides) -> bytes:
    """The .mat file holding `images` (N, 3, 32, 32) and `digits`, as the official files store
    them; `overrides` replace or add variables, None removes one (to build broken files)."""
    variables = {
        "X": np.ascontiguousarray(images.transpose(2, 3, 1, 0)),  # (row, col, channel, image)
        "y": np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1),
        **overrides,
    }
    buf = io.BytesIO()
    savemat(buf, {k: v for k, v in variables.items() if v is not None}, do_compression=True)
    return buf.getvalue()


def write_splits(root: Path, sizes: dict[str, int], seed: int = 0) -> dict:
    """Write one file per split in `sizes` under `root`; return {split: (images, digits)}."""
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, (split, n) in enumerate(sizes.items()):
        images, digits = make_split(n, seed + i)
        (root / FILE_NAMES[split]).write_bytes(mat_bytes(images, digits))
        written[split] = (images, digits)
    return written
