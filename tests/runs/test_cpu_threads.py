"""The trainer's CPU path chooses its intra-op threads (the process's cores shared among the
run's processes on the node, or OMP_NUM_THREADS) and prints the choice."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from one_fast import train
from one_fast.cli.train_flags import config_from_args
from one_fast.data import cpus
from one_fast.engine.distributed import DistInfo
from one_fast.runs import runtime

CPU = DistInfo(0, 1, torch.device("cpu"))


@pytest.fixture(autouse=True)
def _keep_threads():
    """Each test may change torch's thread count: put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_available_cores_are_the_affinity_mask():
    assert cpus.available_cores() == len(os.sched_getaffinity(0))


def test_cores_are_divided_among_the_local_processes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(runtime, "available_cores", lambda: 8)
    rt = runtime.resolve_runtime(config_from_args([]), CPU)
    assert rt.cpu_threads == 4
    assert ("CPU: 4 intra-op threads (8 cores available to this process / 2 processes of the "
            "run on this node); on a machine busy with other work OMP_NUM_THREADS=1") in rt.note
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")  # more processes than cores: one each
    assert runtime.resolve_runtime(config_from_args([]), CPU).cpu_threads == 1


def test_omp_num_threads_wins_and_a_bad_value_names_it(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    rt = runtime.resolve_runtime(config_from_args([]), CPU)
    assert rt.cpu_threads == 3 and "CPU: 3 intra-op threads (OMP_NUM_THREADS)" in rt.note
    for bad in ("0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        with pytest.raises(ValueError, match=f"OMP_NUM_THREADS must be a positive integer, "
                                             f"got '{bad}'"):
            runtime.resolve_runtime(config_from_args([]), CPU)
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "-1")
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE must be a positive integer"):
        runtime.resolve_runtime(config_from_args([]), CPU)


def test_the_trainer_sets_and_prints_its_threads(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: 1)
    torch.set_num_threads(2)
    config = dataclasses.replace(config_from_args([]), depth=8, epochs=1, batch_size=512,
                                 lr_milestones=(), progress=False, out_dir=str(tmp_path / "r"))
    train.run(config)
    assert torch.get_num_threads() == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("CPU: 1 intra-op thread (1 core available to this process / "
                                   "1 process of the run on this node); on a machine busy with "
                                   "other work OMP_NUM_THREADS=1 can be several times faster")
