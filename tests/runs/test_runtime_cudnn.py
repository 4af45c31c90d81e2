"""cuDNN autotuning: on for CUDA runs (fixed shapes every step), off elsewhere; the trainer sets
torch.backends.cudnn.benchmark from the resolved Runtime, which records it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from one_fast.cli.train_flags import config_from_args
from one_fast.engine.distributed import DistInfo
from one_fast.runs import runtime, trainer


@pytest.mark.parametrize("device, expected", [("cuda", True), ("cpu", False)])
def test_cudnn_benchmark_is_on_for_cuda_only(device, expected):
    rt = runtime.resolve_runtime(config_from_args([]), DistInfo(0, 1, torch.device(device)))
    assert rt.cudnn_benchmark is expected


class _Stop(Exception):
    pass


@pytest.mark.parametrize("value", [True, False])
def test_trainer_sets_the_flag_from_the_runtime(tmp_path, monkeypatch, value):
    resolved = runtime.resolve_runtime(config_from_args([]), DistInfo(0, 1, torch.device("cpu")))
    monkeypatch.setattr(trainer, "resolve_runtime",
                        lambda config, dist: dataclasses.replace(resolved,
                                                                 cudnn_benchmark=value))

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(trainer, "build_loaders", stop)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not value)  # restored afterwards
    config = dataclasses.replace(config_from_args([]), out_dir=str(tmp_path / "run"),
                                 progress=False)
    with pytest.raises(_Stop):
        trainer.run(config)
    assert torch.backends.cudnn.benchmark is value
