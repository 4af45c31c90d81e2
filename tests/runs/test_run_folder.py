"""One run per folder: refusal, resume in place, atomic --overwrite, unusable folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from one_fast.runs import folder as run_folder
from one_fast.runs.folder import RunFolderError, prepare_run_folder


def make_run(folder, epoch=3, epochs=12):
    """The files of a run with a checkpoint of ``epoch`` (no weights in it)."""
    folder.mkdir(parents=True)
    torch.save({"epoch": epoch, "config": {"epochs": epochs}}, folder / "checkpoint.pt")
    (folder / "checkpoint.json").write_text(json.dumps({"epoch": epoch,
                                                        "config": {"epochs": epochs}}))
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    return folder


def test_new_run_in_a_used_folder_is_refused(tmp_path):
    run = make_run(tmp_path / "run")
    saved = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(RunFolderError, match=r"already holds a run \(checkpoint after epoch 3 "
                                             r"of 12\): continue it with --resume"):
        prepare_run_folder(run, resume=None, overwrite=False)
    assert (run / "checkpoint.pt").read_bytes() == saved


def test_resume_continues_in_place_and_empty_folders_are_fine(tmp_path):
    run = make_run(tmp_path / "run")
    assert prepare_run_folder(run, resume=str(run), overwrite=False) == run
    assert prepare_run_folder(run, resume=str(run / "checkpoint.pt"), overwrite=False) == run
    assert (run / "metrics.jsonl").exists()
    assert prepare_run_folder(tmp_path / "new" / "deep", resume=None, overwrite=False).is_dir()
    with pytest.raises(RunFolderError, match="--overwrite would delete the run --resume"):
        prepare_run_folder(run, resume=str(run), overwrite=True)


def test_overwrite_replaces_the_whole_run(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "tensorboard").mkdir()
    prepare_run_folder(run, resume=None, overwrite=True)
    assert list(run.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_overwrite_interrupted_leaves_no_mix(tmp_path, monkeypatch):
    """Killed while deleting the old run: the folder is already empty for the new one and the
    old run is whole, aside; killed before the rename: the old run is untouched."""
    run = make_run(tmp_path / "run")

    def crash(path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_run_folder(run, resume=None, overwrite=True)
    assert list(run.iterdir()) == []
    (aside,) = [p for p in tmp_path.iterdir() if p.name != "run"]
    assert sorted(p.name for p in (aside / "run").iterdir()) == [
        "checkpoint.json", "checkpoint.pt", "metrics.jsonl"]

    other = make_run(tmp_path / "other")
    saved = (other / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(run_folder.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_run_folder(other, resume=None, overwrite=True)
    assert (other / "checkpoint.pt").read_bytes() == saved


def test_overwrite_never_deletes_files_a_run_did_not_write(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"also holds files that are not a run's "
                                             r"\(notes.txt\); refusing to delete them"):
        prepare_run_folder(run, resume=None, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoint.pt").exists()


def test_out_dir_naming_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        prepare_run_folder(tmp_path / "f", resume=None, overwrite=False)


def test_a_folder_without_a_checkpoint_is_not_a_run_yet(tmp_path):
    """A run that stopped in its first epoch (non-finite loss, Ctrl-C, a corrupt image) left
    run.json, inputs.json, maybe metrics, but no checkpoint: starting a run there replaces
    them, with a note; files a run does not write are still never deleted."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("inputs.json", "run.json", "metrics.jsonl"):
        (run / name).write_text("{}")
    notes = []
    assert prepare_run_folder(run, resume=None, overwrite=False, say=notes.append) == run
    assert list(run.iterdir()) == []
    assert notes == [f"{run} held no checkpoint (no epoch of its run had finished): starting "
                     "the run there afresh"]
    (run / "inputs.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"also holds files that are not a run's "
                                             r"\(notes.txt\)"):
        prepare_run_folder(run, resume=None, overwrite=False)
    assert (run / "notes.txt").read_text() == "mine"
