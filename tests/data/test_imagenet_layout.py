"""ImageNet folder discovery, devkit reading and validation-folder sorting (no DALI needed)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from one_fast.data.errors import CorruptDatasetError, DatasetNotFoundError
from one_fast.data.imagenet import find_imagenet, prepare_val_folder, read_devkit
from one_fast.data.imagenet.devkit import parse_meta_mat

from .imagenet_files import WNIDS, WORDS, make_devkit_archive, make_tiny_imagenet, meta_mat_bytes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_imagenet(tmp_path_factory.mktemp("imagenet"))


def test_layout_lists_files_with_labels_in_wnid_order(tiny):
    layout = find_imagenet(tiny.root)
    assert layout.wnids == WNIDS and layout.num_classes == 3
    assert layout.class_names == WNIDS  # no devkit: the wnid stands in
    for split in ("train", "val"):
        found = getattr(layout, split)
        expected = tiny.expected(split)
        assert sorted(found.files) == sorted(expected)
        assert [expected[f][0] for f in found.files] == found.labels.tolist()
        assert found.labels.dtype == np.int64
        assert list(found.labels) == sorted(found.labels)  # class by class


def test_class_names_come_from_the_devkit(tmp_path):
    root = make_tiny_imagenet(tmp_path / "a", {"train": 1, "val": 1}, odd_files=False).root
    (root / "ILSVRC2012_devkit_t12" / "data").mkdir(parents=True)
    (root / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").write_bytes(meta_mat_bytes())
    assert find_imagenet(root).class_names == WORDS
    shutil.rmtree(root / "ILSVRC2012_devkit_t12")
    (root / "LOC_synset_mapping.txt").write_text("n00000042 the answer\nn00000007 seven\n")
    assert find_imagenet(root).class_names == ("seven", "the answer", "n00000100")


def test_meta_mat_keeps_only_leaf_classes():
    assert parse_meta_mat(meta_mat_bytes(), "meta.mat") == {
        i + 1: (w, t) for i, (w, t) in enumerate(zip(WNIDS, WORDS, strict=True))}
    with pytest.raises(CorruptDatasetError, match="meta.mat"):
        parse_meta_mat(b"MATLAB 5.0 MAT-file, but not really", "meta.mat")


@pytest.mark.parametrize("break_it, message", [
    (lambda r: shutil.rmtree(r), "does not exist"),
    (lambda r: shutil.rmtree(r / "train"), r"train does not exist; extract ILSVRC2012_img_train"),
    (lambda r: shutil.rmtree(r / "val"), r"val does not exist; extract ILSVRC2012_img_val.*"
                                         r"prepare_imagenet"),
    (lambda r: shutil.rmtree(r / "val" / WNIDS[1]), r"different class folders \(train/ only: "
                                                    r"n00000042\)"),
    (lambda r: [p.unlink() for p in (r / "train" / WNIDS[2]).iterdir()],
     r"class folders without images in .*train: n00000100"),
    (lambda r: (r / "train" / "n00000001.tar").write_bytes(b""), r"archives \(\*\.tar\) that "
                                                                 r"are not extracted"),
    (lambda r: (r / "val" / WNIDS[0] / "x_0.JPEG").rename(r / "val" / "x_0.JPEG"),
     r"1 images outside class folders \(x_0.JPEG\): partly sorted.*prepare_imagenet"),
])
def test_bad_layouts_name_what_is_missing(tmp_path, break_it, message):
    root = make_tiny_imagenet(tmp_path / "d", {"train": 1, "val": 1}, odd_files=False).root
    (root / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG").rename(root / "val" / WNIDS[0] / "x_0.JPEG")
    break_it(root)
    with pytest.raises(DatasetNotFoundError, match=message):
        find_imagenet(root)


def _flat_val(tmp_path, n=7):
    """A flat val/ folder of n images and the devkit's ground truth for them."""
    root = tmp_path / "flat"
    val = root / "val"
    val.mkdir(parents=True)
    ids = [(i * 5) % 3 + 1 for i in range(n)]  # ILSVRC2012_IDs 1..3
    for i in range(1, n + 1):
        (val / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(f"image {i}".encode())
    devkit = make_devkit_archive(root / "ILSVRC2012_devkit_t12.tar.gz", ids)
    return val, devkit, ids


def test_val_folder_is_sorted_from_the_devkit_ground_truth(tmp_path):
    val, devkit, ids = _flat_val(tmp_path)
    kit = read_devkit(devkit)
    assert kit.class_names == dict(zip(WNIDS, WORDS, strict=True))
    result = prepare_val_folder(val, kit.val_wnids)
    assert (result.moved, result.already_sorted, result.missing) == (7, 0, ())
    for i, class_id in enumerate(ids, start=1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        assert (val / WNIDS[class_id - 1] / name).read_bytes() == f"image {i}".encode()
    assert not [p for p in val.iterdir() if p.is_file()]


def test_val_sorting_resumes_after_an_interruption(tmp_path):
    val, devkit, ids = _flat_val(tmp_path)
    kit = read_devkit(devkit)
    # As if a first run was stopped after two moves, and one image never got extracted.
    for i in (1, 2):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        (val / WNIDS[ids[i - 1] - 1]).mkdir(exist_ok=True)
        (val / name).rename(val / WNIDS[ids[i - 1] - 1] / name)
    (val / "ILSVRC2012_val_00000007.JPEG").unlink()
    result = prepare_val_folder(val, kit.val_wnids)
    assert (result.moved, result.already_sorted) == (4, 2)
    assert result.missing == ("ILSVRC2012_val_00000007.JPEG",)
    again = prepare_val_folder(val, kit.val_wnids)
    assert (again.moved, again.already_sorted) == (0, 6)


def test_val_sorting_moves_nothing_when_a_file_is_unknown(tmp_path):
    val, devkit, _ = _flat_val(tmp_path)
    (val / "holiday.JPEG").write_bytes(b"?")
    with pytest.raises(CorruptDatasetError, match="holiday.JPEG.*nothing was moved"):
        prepare_val_folder(val, read_devkit(devkit).val_wnids)
    assert len([p for p in val.iterdir() if p.is_file()]) == 8


def test_kaggle_val_solution_and_extracted_devkit(tmp_path):
    val, devkit, ids = _flat_val(tmp_path, n=3)
    csv = val.parent / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i:08d},{WNIDS[c - 1]} 1 2 30 40 {WNIDS[c - 1]} 5 6 7 8\n"
        for i, c in enumerate(ids, start=1)))
    from_csv = read_devkit(csv).val_wnids
    assert from_csv == read_devkit(devkit).val_wnids
    csv.write_text("id,label\n")
    with pytest.raises(CorruptDatasetError, match="ImageId,PredictionString"):
        read_devkit(csv)


def test_devkit_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        read_devkit(tmp_path / "nope.tar.gz")
    (tmp_path / "kit").mkdir()
    with pytest.raises(DatasetNotFoundError, match="lacks data/meta.mat"):
        read_devkit(tmp_path / "kit")
    bad = make_devkit_archive(tmp_path / "bad.tar.gz", [1, 9])
    with pytest.raises(CorruptDatasetError, match=r"class ids missing from meta.mat: \[9\]"):
        read_devkit(bad)
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(CorruptDatasetError, match="not a readable tar"):
        read_devkit(tmp_path / "junk.tar.gz")


def test_prepare_command_sorts_val_and_checks_the_layout(tmp_path, capsys):
    from one_fast.prepare_imagenet import main

    root = make_tiny_imagenet(tmp_path / "cmd", {"train": 2, "val": 2}, odd_files=False).root
    ids = []
    for label, wnid in enumerate(WNIDS):  # flatten val/ back to the official layout
        for path in sorted((root / "val" / wnid).iterdir()):
            ids.append(label + 1)
            path.rename(root / "val" / f"ILSVRC2012_val_{len(ids):08d}.JPEG")
        (root / "val" / wnid).rmdir()
    assert main([str(root)]) == 1
    assert "no devkit" in capsys.readouterr().err
    make_devkit_archive(root / "ILSVRC2012_devkit_t12.tar.gz", ids)
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "6 images moved" in out and "3 classes, 6 train / 6 val images: ready" in out
    layout = find_imagenet(root)
    assert layout.val.labels.tolist() == [i - 1 for i in ids]
    assert layout.class_names == WORDS


def test_prepare_check_reports_what_is_missing_with_or_without_a_devkit(tmp_path, capsys):
    from one_fast.prepare_imagenet import main

    root = make_tiny_imagenet(tmp_path / "chk", {"train": 1, "val": 1}, odd_files=False).root
    assert main([str(root), "--check"]) == 0
    out = capsys.readouterr().out
    assert "layout: ImageNet at " in out and "3 classes, 3 train / 3 val images: ready" in out
    assert "class names: 3 of 3 classes are named by their wnid" in out
    assert "devkit: none in " in out and "needed only to sort a flat val/" in out
    # A sorted val/ needs no devkit: the plain command checks it and succeeds.
    assert main([str(root)]) == 0
    assert "already sorted into class folders: nothing to move" in capsys.readouterr().out

    make_devkit_archive(root / "ILSVRC2012_devkit_t12.tar.gz", [1, 2, 3])
    assert main([str(root), "--check"]) == 0
    out = capsys.readouterr().out
    assert "class names" not in out and "devkit: " in out and "devkit_t12.tar.gz" in out

    shutil.rmtree(root / "val" / WNIDS[1])  # a missing class folder, reported, nothing changed
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert main([str(root), "--check"]) == 1
    out = capsys.readouterr().out
    assert "layout: not complete: " in out and "train/ only: n00000042" in out
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_prepare_without_a_devkit_points_to_check(tmp_path, capsys):
    from one_fast.prepare_imagenet import main

    root = make_tiny_imagenet(tmp_path / "flat", {"train": 1, "val": 1}, odd_files=False).root
    for path in sorted((root / "val").rglob("*.JPEG")):
        path.rename(root / "val" / path.name)
    assert main([str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no devkit in ") and err.count("\n") == 1
    assert f"python -m one_fast.prepare_imagenet {root} --check" in err
