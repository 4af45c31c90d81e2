"""evaluate, export, analyze and predict on a run trained with ``--dataset imagenet`` (DALI's
CPU mode, the tests' tiny JPEG folder): the validation pipeline from the run's own config, an
export that needs no dataset, and the wnids as class names when there is no devkit."""

from __future__ import annotations

import json

import pytest

from one_fast import analyze as analyze_command
from one_fast import evaluate as evaluate_command
from one_fast import export as export_command
from one_fast import predict as predict_command
from one_fast import train
from one_fast.data.imagenet import dali_available
from one_fast.data.loaders import build_loaders
from one_fast.deploy import load_exported
from one_fast.engine.metrics import read_metrics

from .data.imagenet_files import WNIDS, WORDS, make_devkit_archive, make_tiny_imagenet

pytestmark = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed "
                                "(pip install nvidia-dali-cuda130)")
# A small CIFAR-style ResNet-8 on 16x16 crops: one epoch of 2 steps takes seconds on a CPU.
FLAGS = ["--dataset", "imagenet", "--arch", "resnet", "--depth", "8", "--image-size", "16",
         "--batch-size", "8", "--lr", "0.01", "--lr-milestones", "", "--epochs", "1",
         "--data-threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_imagenet(tmp_path_factory.mktemp("imagenet_commands"))


@pytest.fixture(scope="module")
def imagenet_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("imagenet_run") / "run"
    assert train.main([*FLAGS, "--data-dir", str(tiny.root), "--out-dir", str(out)]) == 0
    return out


def _json(main, argv, capsys) -> dict:
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_evaluate_reads_the_validation_pipeline_and_reproduces_the_run(imagenet_run, capsys):
    result = _json(evaluate_command.main, [str(imagenet_run)], capsys)
    last = [r for r in read_metrics(imagenet_run) if "test_acc" in r][-1]
    assert result["images"] == 10  # the 3 x 3 validation images + the CMYK one
    assert result["accuracy"] == last["test_acc"] and result["matches_recorded"] is True
    train_split = _json(evaluate_command.main, [str(imagenet_run), "--split", "train",
                                                "--per-class"], capsys)
    assert train_split["images"] == 19 and train_split["class_names"] == list(WNIDS)
    assert evaluate_command.main([str(imagenet_run), "--per-class"]) == 0
    rows = capsys.readouterr().out.splitlines()[-3:]
    assert [row.split()[0] for row in rows] == list(WNIDS)  # whole wnids, not cut to 8


def test_evaluate_without_the_folder_names_it(imagenet_run, tmp_path, capsys):
    assert evaluate_command.main([str(imagenet_run), "--data-dir", str(tmp_path / "gone")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ImageNet: data directory ") and "gone" in err, err
    assert "unknown dataset" not in err


def test_export_checks_on_validation_images_or_says_it_generated_them(imagenet_run, tmp_path,
                                                                      capsys):
    out = tmp_path / "student.pt2"
    assert export_command.main([str(imagenet_run), "--out", str(out)]) == 0
    assert "checked against the in-memory model on 8 validation images of " in \
        capsys.readouterr().out
    # No dataset at all: the run's inputs.json describes the input, the check uses
    # generated inputs, and the command says so.
    elsewhere = tmp_path / "elsewhere.pt2"
    assert export_command.main([str(imagenet_run), "--out", str(elsewhere), "--data-dir",
                                str(tmp_path / "gone")]) == 0
    said = capsys.readouterr().out
    assert "on 8 generated inputs (standard normal; no ImageNet validation images at " in said
    exported = load_exported(elsewhere)
    assert exported.inputs.dataset == "imagenet" and exported.inputs.image_shape == (3, 16, 16)
    assert exported.inputs.class_names == WNIDS


def test_analyze_writes_the_agreement(imagenet_run, tmp_path, capsys):
    assert analyze_command.main([str(imagenet_run), "--only", "agreement",
                                 "--out-dir", str(tmp_path)]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "agreement.json").read_text())
    assert record["method"] == "one" and record["members"] == 3


def test_predict_names_imagenet_classes_by_wnid(imagenet_run, tiny, capsys):
    image = tiny.root / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    result = _json(predict_command.main, [str(imagenet_run), str(image), "--resize",
                                          "--top-k", "3"], capsys)
    names = [t["name"] for t in result["predictions"][0]["top"]]
    assert sorted(names) == sorted(WNIDS)


def test_class_names_are_the_devkits_words_or_the_wnids(tmp_path):
    tiny = make_tiny_imagenet(tmp_path / "data", per_class={"train": 1, "val": 1},
                              odd_files=False)

    def names():
        _, _, info = build_loaders("imagenet", 1, device="cpu", seed=0, data_dir=tiny.root,
                                   image_size=16, data_threads=1)
        return info.class_names

    assert names() == WNIDS
    make_devkit_archive(tiny.root / "ILSVRC2012_devkit_t12.tar.gz", [1, 2, 3])
    assert names() == WORDS
