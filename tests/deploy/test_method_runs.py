"""dml and kd runs: evaluate reproduces their records, and what each deploys (dml: a member or
the averaged-probability ensemble; kd: the one-branch student)."""

from __future__ import annotations

import json

import pytest
import torch

from one_fast import evaluate as evaluate_command
from one_fast import export as export_command
from one_fast.cli.train_flags import config_from_args
from one_fast.engine.metrics import read_metrics
from one_fast.runs import load_run
from one_fast.train import run

pytestmark = pytest.mark.slow  # each trains a short run of its own


def train(folder, *flags):
    config = config_from_args(["--depth", "8", "--epochs", "1", "--no-progress",
                                  "--out-dir", str(folder), *flags])
    run(config)
    return folder


def evaluated(run_dir, capsys):
    assert evaluate_command.main([str(run_dir), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_dml_run(tmp_path, capsys):
    run_dir = train(tmp_path / "dml", "--method", "dml", "--num-branches", "2")
    capsys.readouterr()  # the training run's own output
    result = evaluated(run_dir, capsys)
    assert result["accuracy"] == read_metrics(run_dir)[-1]["test_acc"]
    assert set(result["accuracy"]) == {"branch_0", "branch_1", "ensemble"}

    loaded = load_run(run_dir)
    out = tmp_path / "ensemble.pt2"
    assert export_command.main([str(run_dir), "--member", "ensemble", "--out", str(out)]) == 0
    assert "output: log_probabilities" in capsys.readouterr().out
    x = loaded.inputs.normalize(loaded.dataset.test_images[:16])
    with torch.no_grad():
        logits = loaded.model(x)[0].double()
    expected = torch.log(torch.softmax(logits, -1).mean(1))  # averaged probabilities
    got = export_command.load_exported(out).run(x).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    member = export_command.extract_branch(loaded.model, 1)
    torch.testing.assert_close(member(x).double(), logits[:, 1], rtol=1e-5, atol=1e-5)


def test_kd_run(trained_run, tmp_path, capsys):
    run_dir = train(tmp_path / "kd", "--method", "kd", "--teacher", str(trained_run))
    capsys.readouterr()  # the training run's own output
    assert evaluate_command.main([str(run_dir), "--json", "--loss"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == read_metrics(run_dir)[-1]["test_acc"]
    assert set(result["accuracy"]) == {"branch_0"}
    assert set(result["loss_terms"]) == {"loss", "ce_branches", "kl"}

    out = tmp_path / "student.pt2"
    assert export_command.main([str(run_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    assert export_command.main([str(run_dir), "--member", "ensemble", "--out",
                                str(tmp_path / "e.pt2")]) == 1
    assert "has no ensemble" in capsys.readouterr().err
    loaded = load_run(run_dir)
    x = loaded.inputs.normalize(loaded.dataset.test_images[:16])
    with torch.no_grad():
        expected = loaded.model(x)[0][:, 0]
    torch.testing.assert_close(export_command.load_exported(out).run(x), expected,
                               rtol=1e-5, atol=1e-5)
