"""Atomic checkpoint writes, safe loads, clear errors for corrupt and mismatched checkpoints."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat

import numpy as np
import pytest
import torch

from one_fast.engine import CheckpointError, capture_rng_state, load_checkpoint, save_checkpoint
from one_fast.engine import checkpoint as ckpt

from ..full_disk import fill_disk_after


@dataclasses.dataclass
class Cfg:
    dataset: str = "digits"
    depth: int = 8
    block: str = "basic"
    num_branches: int = 3
    num_classes: int = 10
    shared_stages: tuple[int, ...] = (0, 1)
    gate: bool = True
    lr: float = 0.1


def make_state(epoch=1, config=None):
    torch.manual_seed(epoch)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model(torch.randn(5, 4)).square().mean().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [150, 225])
    return {
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "schedule": sched.state_dict(), "epoch": epoch, "step": 10 * epoch,
        "rng": capture_rng_state("cpu"), "config": config if config is not None else Cfg(),
    }


def only_files(run_dir):
    return sorted(p.name for p in run_dir.iterdir())


def test_round_trip_weights_only(tmp_path):
    state = make_state()
    path = save_checkpoint(tmp_path, state)
    assert path == tmp_path / "checkpoint.pt"
    assert only_files(tmp_path) == ["checkpoint.json", "checkpoint.pt"]
    for where in (tmp_path, path):  # run dir or file
        loaded = load_checkpoint(where, expected={"depth": 8, "num_branches": 3})
        assert loaded["epoch"] == 1 and loaded["step"] == 10
        assert loaded["config"] == dataclasses.asdict(Cfg())  # dataclass stored as a dict
        for key, value in state["model"].items():
            assert torch.equal(loaded["model"][key], value)
        assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
        assert loaded["schedule"] == state["schedule"]
        assert loaded["rng"]["python"] == state["rng"]["python"]
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["epoch"] == 1 and meta["step"] == 10 and meta["config"]["depth"] == 8


def _partial_save(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def _failing_fsync(fd):
    raise OSError(errno.EIO, "I/O error")


@pytest.mark.parametrize("failure", ["save", "save_interrupt", "fsync", "unsafe_state"])
def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch, failure):
    save_checkpoint(tmp_path, make_state(epoch=1))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    before_meta = (tmp_path / "checkpoint.json").read_bytes()
    state = make_state(epoch=2)
    expected_error = OSError
    if failure == "save":
        monkeypatch.setattr(torch, "save", _partial_save)
    elif failure == "save_interrupt":
        def interrupted(obj, f, *args, **kwargs):
            f.write(b"partial")
            raise KeyboardInterrupt
        monkeypatch.setattr(torch, "save", interrupted)
        expected_error = KeyboardInterrupt
    elif failure == "fsync":
        monkeypatch.setattr(ckpt.os, "fsync", _failing_fsync)
    else:  # a numpy array would make the checkpoint unloadable with weights_only=True
        state["extra"] = np.zeros(3)
        expected_error = CheckpointError
    with pytest.raises(expected_error) as info:
        save_checkpoint(tmp_path, state)
    if failure == "unsafe_state":
        assert "weights_only" in str(info.value) and "numpy" in str(info.value)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert (tmp_path / "checkpoint.json").read_bytes() == before_meta
    assert only_files(tmp_path) == ["checkpoint.json", "checkpoint.pt"]  # no temp file left
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["epoch"] == 1


def test_full_disk_is_an_oserror_not_torchs_runtime_error(tmp_path, monkeypatch):
    """torch.save reports a failing write as "enforce fail at inline_container.cc"; the caller
    gets the OSError (ENOSPC) instead, and the previous checkpoint stays."""
    save_checkpoint(tmp_path, make_state(epoch=1))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    fill_disk_after(monkeypatch, 4096, ".checkpoint.pt.")
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path, make_state(epoch=2))
    assert info.value.errno == errno.ENOSPC
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert only_files(tmp_path) == ["checkpoint.json", "checkpoint.pt"]


def test_successful_write_replaces(tmp_path):
    save_checkpoint(tmp_path, make_state(epoch=1))
    save_checkpoint(tmp_path, make_state(epoch=2))
    assert load_checkpoint(tmp_path)["epoch"] == 2
    assert only_files(tmp_path) == ["checkpoint.json", "checkpoint.pt"]


@pytest.mark.parametrize("damage", ["truncated", "tiny", "empty", "garbage", "text"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    path = save_checkpoint(tmp_path, make_state())
    data = path.read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "tiny": data[:10],
        "empty": b"",
        "garbage": np.random.default_rng(0).bytes(4096),
        "text": b"not a checkpoint\n",
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="checkpoint.pt") as info:
        load_checkpoint(tmp_path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "config": Cfg()}, path)  # a dataclass instance: not weights-only
    with pytest.raises(CheckpointError, match="weights-only") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_not_a_dict(tmp_path):
    path = tmp_path / "other.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a dict"):
        load_checkpoint(path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "checkpoint.pt")):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere" / "ck.pt")


def test_mismatch_lists_every_field(tmp_path):
    save_checkpoint(tmp_path, make_state())
    expected = {"depth": 32, "num_branches": 4, "num_classes": 10, "block": "basic",
                "shared_stages": [0, 1], "gate": False, "width": 2}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path, expected=expected)
    message = str(info.value)
    assert str(tmp_path / "checkpoint.pt") in message
    assert "depth: checkpoint=8, requested=32" in message
    assert "num_branches: checkpoint=3, requested=4" in message
    assert "gate: checkpoint=True, requested=False" in message
    assert "width: checkpoint=<missing>, requested=2" in message
    for same in ("num_classes", "block", "shared_stages"):  # tuple == list by content
        assert f"{same}:" not in message


def test_expected_needs_a_config(tmp_path):
    save_checkpoint(tmp_path, {"epoch": 1})
    assert load_checkpoint(tmp_path)["epoch"] == 1
    with pytest.raises(CheckpointError, match="no config"):
        load_checkpoint(tmp_path, expected={"depth": 8})


def test_custom_filename_and_no_temp_on_success(tmp_path):
    path = save_checkpoint(tmp_path / "new" / "run", {"epoch": 3}, filename="last.pt")
    assert only_files(path.parent) == ["last.json", "last.pt"]
    assert load_checkpoint(path)["epoch"] == 3
    assert not any(name.endswith(".tmp") for name in os.listdir(path.parent))


def test_written_files_get_the_usual_mode(tmp_path):
    # mkstemp makes 0600 files; a checkpoint should be as readable as any file the user writes.
    umask = os.umask(0o022)
    os.umask(umask)
    path = save_checkpoint(tmp_path, {"epoch": 1})
    for written in (path, tmp_path / "checkpoint.json"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask


def test_checkpoint_progress_reads_the_epoch_without_the_weights(tmp_path):
    from one_fast.engine.checkpoint import checkpoint_progress

    save_checkpoint(tmp_path, {"model": {"w": torch.ones(3)}, "epoch": 4,
                               "config": {"epochs": 9}})
    assert checkpoint_progress(tmp_path) == (4, {"epochs": 9})
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is unreadable"):
        checkpoint_progress(tmp_path)
    with pytest.raises(FileNotFoundError):
        checkpoint_progress(tmp_path / "nope")
