"""The input description a deployed model carries: normalisation, class names, its file."""

from __future__ import annotations

import io
import pickle
import tarfile

import pytest
import torch

from one_fast.data import load_dataset, loaders_for
from one_fast.deploy import InputSpec, class_names, input_spec, read_input_spec, save_input_spec

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck"]


def test_normalize_is_the_training_loaders():
    data = load_dataset("digits")
    spec = input_spec(data)
    assert spec.image_shape == (3, 16, 16) and spec.num_classes == 10
    assert spec.class_names == tuple(str(d) for d in range(10))
    _, test = loaders_for(data, 50, device="cpu", seed=0)
    x, _ = next(test.eval_batches())
    assert torch.equal(spec.normalize(data.test_images[:50]), x)
    with pytest.raises(ValueError, match=r"uint8 \(N, 3, 16, 16\)"):
        spec.normalize(data.test_images[:2, :, :8])


def test_saved_and_read_back(tmp_path):
    spec = InputSpec("toy", 3, 3, 4, 5, (0.1, 0.2, 0.3), (1.0, 2.0, 3.0), ("a", "b", "c"))
    assert read_input_spec(tmp_path) is None
    save_input_spec(tmp_path, spec)
    assert read_input_spec(tmp_path) == spec
    (tmp_path / "inputs.json").write_text('{"dataset": "toy"}')
    with pytest.raises(ValueError, match="lacks num_classes, channels"):
        read_input_spec(tmp_path)
    assert spec.class_name(1) == "b" and spec.class_name(7) == "7"


def _meta(names):
    return pickle.dumps({b"label_names": [n.encode() for n in names], b"num_cases_per_batch":
                         10000})


def test_cifar_class_names_from_the_folder_or_the_archive(tmp_path):
    assert class_names("cifar10", None) is None
    assert class_names("cifar10", tmp_path) is None  # no files: no names
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(_meta(NAMES))
    assert class_names("cifar10", tmp_path) == tuple(NAMES)

    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    data = _meta(NAMES[::-1])
    with tarfile.open(archive_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert class_names("cifar10", archive_dir) == tuple(NAMES[::-1])


def test_a_meta_file_with_code_in_it_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [print]}))
    with pytest.raises(ValueError, match="unreadable"):
        class_names("cifar100", tmp_path)
    assert class_names("svhn", tmp_path) is None


def test_the_trainers_spec_from_its_loaders_equals_the_datasets():
    # What the trainer saves (from build_loaders' info and loader) is what a dataset gives.
    from one_fast.data.loaders import build_loaders
    from one_fast.deploy import loader_input_spec

    _, test, info = build_loaders("digits", 64, device="cpu", seed=0)
    assert loader_input_spec(info, test) == input_spec(load_dataset("digits"))


def test_the_trainers_spec_of_an_imagenet_loader(tmp_path):
    from one_fast.data.imagenet import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        ImageNetLoader,
        dali_available,
        find_imagenet,
    )
    from one_fast.data.loaders import DatasetInfo
    from one_fast.deploy import loader_input_spec
    from tests.data.imagenet_files import make_tiny_imagenet

    if not dali_available():
        pytest.skip("NVIDIA DALI is not installed")
    layout = find_imagenet(make_tiny_imagenet(tmp_path).root)
    loader = ImageNetLoader(layout.val, 4, device="cpu", seed=0, augment=False,
                            drop_last=False, image_size=24, num_threads=1)
    info = DatasetInfo("imagenet", len(layout.train), len(layout.val), layout.num_classes, 24)
    spec = loader_input_spec(info, loader, tmp_path)
    assert spec.image_shape == (3, 24, 24) and spec.num_classes == layout.num_classes
    assert spec.mean == tuple(IMAGENET_MEAN) and spec.std == tuple(IMAGENET_STD)
    assert spec.dataset == "imagenet" and spec.class_names is None
