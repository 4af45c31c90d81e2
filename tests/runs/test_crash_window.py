"""A run killed between any two of its writes resumes or reruns correctly, and what it left is
judged truthfully: the trainer in-process, killed by an exception no handler of it catches."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from one_fast import evaluate, train
from one_fast.cli.train_flags import config_from_args
from one_fast.config import config_hash
from one_fast.engine.checkpoint import load_checkpoint
from one_fast.runs import provenance, trainer
from one_fast.runs.loading import load_run
from one_fast.runs.status import FINISHED, PARTIAL, classify_run

TINY = ("--batch-size", "512", "--no-progress", "--lr-milestones", "")  # 2 steps per epoch


class Killed(BaseException):
    """The process dying at this point (nothing in the trainer handles it)."""


def config(run_dir: Path, epochs: int, **overrides):
    return dataclasses.replace(config_from_args(["--epochs", str(epochs), "--out-dir",
                                                 str(run_dir), *TINY]), **overrides)


def epochs_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").open()]


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run to compare with."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train.run(config(run_dir, 2))
    return run_dir


def test_killed_between_the_metrics_record_and_the_checkpoint(tmp_path, monkeypatch, straight):
    """Epoch 2 is logged, its checkpoint never written: the run is partial (epoch 1), and its
    resume drops the orphan record before appending, ending as the uninterrupted run."""
    run_dir = tmp_path / "run"
    real = trainer._save

    def dies_before_epoch_2_is_saved(folder, state, saved_epoch):
        if state["epoch"] == 2:
            raise Killed
        real(folder, state, saved_epoch)

    monkeypatch.setattr(trainer, "_save", dies_before_epoch_2_is_saved)
    with pytest.raises(Killed):
        train.run(config(run_dir, 2))
    monkeypatch.setattr(trainer, "_save", real)
    assert epochs_logged(run_dir) == [1, 2]
    state = classify_run(run_dir, config(run_dir, 2))
    assert (state.state, state.epoch) == (PARTIAL, 1)
    train.run(config(run_dir, 2, resume=str(run_dir)))
    assert epochs_logged(run_dir) == [1, 2]
    assert same_weights(run_dir, straight)
    assert classify_run(run_dir, config(run_dir, 2)).state == FINISHED


def test_killed_after_the_last_checkpoint_before_run_json_says_so(tmp_path, monkeypatch,
                                                                  straight):
    """The last checkpoint is written, run.json still says "running": finished all the same
    (the checkpoint says how far a run got), and evaluate reproduces its record."""
    run_dir = tmp_path / "run"

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(provenance, "finish_provenance", killed)
    with pytest.raises(Killed):
        train.run(config(run_dir, 2))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    state = classify_run(run_dir, config(run_dir, 2))
    assert state.state == FINISHED and state.record["epoch"] == 2
    assert evaluate.evaluate_run(load_run(run_dir))["matches_recorded"] is True
    assert same_weights(run_dir, straight)


def test_a_half_written_metrics_line_is_dropped_on_resume(tmp_path, straight):
    run_dir = tmp_path / "run"
    train.run(config(run_dir, 1))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train": {"lo')  # killed mid-write
    train.run(config(run_dir, 2, resume=str(run_dir)))
    assert epochs_logged(run_dir) == [1, 2]  # read_metrics would have raised on the old line
    assert same_weights(run_dir, straight)
    invocations = json.loads((run_dir / "run.json").read_text())["invocations"]
    assert [(i["from_epoch"], i["epochs_finished"], i["status"]) for i in invocations] == [
        (0, 1, "finished"), (1, 2, "finished")]


def test_provenance_records_where_the_run_came_from(tmp_path):
    run_dir = tmp_path / "run"
    cfg = config(run_dir, 1)
    train.run(cfg)
    data = json.loads((run_dir / "run.json").read_text())
    assert data["status"] == "finished" and data["epochs_finished"] == 1
    assert data["config"]["epochs"] == 1 and data["config_hash"] == \
        config_hash(cfg)
    (invocation,) = data["invocations"]
    assert invocation["code"] == provenance.code_version()
    assert set(invocation["versions"]) >= {"python", "torch", "triton", "cuda", "cudnn"}
    assert invocation["world_size"] == 1 and invocation["devices"][0].startswith("cpu")
    assert invocation["started"] <= invocation["ended"] and invocation["host"]
    assert invocation["command"]
    runtime = invocation["runtime"]  # what the trainer resolved, cuDNN autotuning included
    assert runtime["device"] == "cpu" and runtime["cudnn_benchmark"] is False
    assert runtime["loss_backend"] in ("reference", "native", "triton")
    assert isinstance(runtime["cpu_threads"], int) and runtime["cpu_threads"] >= 1
    line = provenance.provenance_line(run_dir)
    assert line == f"trained by commit {provenance.code_label(invocation['code'])}, config " \
                   f"{data['config_hash']}"
    report = evaluate.format_result(evaluate.evaluate_run(load_run(run_dir)))
    assert report.splitlines()[0].endswith(f"; {line}")  # evaluate says what it reads


def test_an_unreadable_run_json_is_named_and_never_finished(tmp_path, capsys):
    """The run is not counted (the runner says why); resuming it names the file in one line
    and starts its provenance anew."""
    run_dir = tmp_path / "run"
    train.run(config(run_dir, 1))
    (run_dir / "run.json").write_text('{"format": 1, "conf')
    state = classify_run(run_dir, config(run_dir, 1))
    assert state.state == "failed" and "run.json is unreadable" in state.detail
    capsys.readouterr()
    train.run(config(run_dir, 2, resume=str(run_dir)))
    warnings = [line for line in capsys.readouterr().out.splitlines() if "run.json" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {run_dir / 'run.json'} is "
                                                         "unreadable")
    data = json.loads((run_dir / "run.json").read_text())
    assert [i["from_epoch"] for i in data["invocations"]] == [1]
    assert classify_run(run_dir, config(run_dir, 2)).state == FINISHED
