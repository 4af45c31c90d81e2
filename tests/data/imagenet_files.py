"""Write tiny ImageNet-layout folders of JPEGs (Pillow) and devkit files, for loader tests.

Every image is one flat colour, so it survives any crop, resize or flip unchanged: a batch's
pixels identify which file they came from and check the normalisation. `expected_rgb` holds each
file's colour as Pillow decodes it (greyscale and CMYK files included).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from one_fast.data.imagenet import IMAGENET_MEAN, IMAGENET_STD

WNIDS = ("n00000007", "n00000042", "n00000100")  # sorted: labels 0, 1, 2
WORDS = ("seven, 7", "forty-two", "hundred")
COLOUR_TOL = 1.5  # DALI and Pillow round a flat JPEG colour differently by <= 1 level
SIZES = ((40, 56), (56, 40), (48, 48), (33, 70), (64, 50))  # (width, height)


@dataclass
class TinyImageNet:
    root: Path
    # relative path "train/<wnid>/<name>" -> (label, expected RGB as Pillow decodes it)
    files: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)

    def expected(self, split: str) -> dict[str, tuple[int, np.ndarray]]:
        """{path relative to the split folder: (label, rgb)} of one split."""
        prefix = f"{split}/"
        return {k[len(prefix):]: v for k, v in self.files.items() if k.startswith(prefix)}


def _save(img: Image.Image, path: Path) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=95)
    with Image.open(path) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float64).mean(axis=(0, 1))


def make_tiny_imagenet(root: Path, per_class: dict[str, int] | None = None,
                       odd_files: bool = True) -> TinyImageNet:
    """train/ and val/ with 3 classes of flat-colour JPEGs of several sizes; with `odd_files`,
    one greyscale JPEG (train, class 1) and one CMYK JPEG (val, class 2) as well.

    Colour of image j of class c: (40 + 80 c, 16 + 24 j, 128 in train / 200 in val); all
    colours differ by >= 10 in some channel (asserted), so an output image is matched to its
    file by nearest colour.
    """
    counts = per_class or {"train": 6, "val": 3}
    tiny = TinyImageNet(root)
    for split, n in counts.items():
        blue = 128 if split == "train" else 200
        for label, wnid in enumerate(WNIDS):
            for j in range(n):
                w, h = SIZES[(j + label) % len(SIZES)]
                colour = (40 + 80 * label, 16 + 24 * j, blue)
                rel = f"{split}/{wnid}/{wnid}_{j}.JPEG"
                tiny.files[rel] = (label, _save(Image.new("RGB", (w, h), colour), root / rel))
    if odd_files:
        rel = f"train/{WNIDS[1]}/{WNIDS[1]}_grey.JPEG"
        tiny.files[rel] = (1, _save(Image.new("L", (45, 38), 230), root / rel))
        rel = f"val/{WNIDS[2]}/{WNIDS[2]}_cmyk.JPEG"
        tiny.files[rel] = (2, _save(Image.new("CMYK", (52, 44), (200, 10, 90, 20)), root / rel))
    colours = np.stack([rgb for _, rgb in tiny.files.values()])
    gaps = np.abs(colours[:, None] - colours[None]).max(-1) + np.eye(len(colours)) * 1e9
    assert gaps.min() >= 10, "test colours too close to tell apart"
    return tiny


def meta_mat_bytes(wnids=WNIDS, words=WORDS) -> bytes:
    """A devkit meta.mat: the leaf classes with ILSVRC2012_ID 1..n, then two ancestors (which
    have children and must be ignored), in the official struct-array layout."""
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    rows = [(i + 1, w, t, f"gloss of {w}", 0, np.zeros((1, 0)), 0, 1300)
            for i, (w, t) in enumerate(zip(wnids, words, strict=True))]
    rows += [(len(wnids) + 1, "n99999998", "animal", "", 2, np.array([1, 2]), 1, 0),
             (len(wnids) + 2, "n99999999", "entity", "", 1, np.array([4]), 2, 0)]
    synsets = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for k, row in enumerate(rows):
        for f, value in zip(fields, row, strict=True):
            synsets[k, 0][f] = value
    buf = io.BytesIO()
    savemat(buf, {"synsets": synsets})
    return buf.getvalue()


def make_devkit_archive(path: Path, ground_truth_ids: list[int]) -> Path:
    """ILSVRC2012_devkit_t12.tar.gz with data/meta.mat and the validation ground truth."""
    members = {
        "ILSVRC2012_devkit_t12/data/meta.mat": meta_mat_bytes(),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt":
            "".join(f"{i}\n" for i in ground_truth_ids).encode(),
        "ILSVRC2012_devkit_t12/readme.txt": b"devkit",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def identify_flat_images(images: torch.Tensor, expected: dict,
                         normalised: bool = True) -> list[str]:
    """Each flat-colour image's file (nearest expected colour), checking it is flat and within
    COLOUR_TOL of that colour after undoing the normalisation."""
    x = images.float().cpu()
    if normalised:
        x = (x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
             + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) * 255
    names = list(expected)
    colours = torch.tensor(np.stack([expected[n][1] for n in names]), dtype=torch.float32)
    found = []
    for img in x:
        assert (img.amax((1, 2)) - img.amin((1, 2))).max() < 1.5, "image is not flat"
        rgb = img.mean((1, 2))
        dist = (colours - rgb).abs().amax(1)
        k = int(dist.argmin())
        assert dist[k] <= COLOUR_TOL, f"colour {rgb.tolist()} matches no file"
        found.append(names[k])
    return found
