"""CL-ILR and OKDDip through the trainer on digits: each method's student and ensemble learn,
resume is bit-exact, evaluate reproduces the last record, export writes the student."""

from __future__ import annotations

import json

import pytest
import torch

from one_fast import evaluate as evaluate_command
from one_fast import export as export_command
from one_fast import train
from one_fast.cli.train_flags import config_from_args
from one_fast.engine.checkpoint import load_checkpoint
from one_fast.engine.metrics import read_metrics
from one_fast.runs import load_run
from one_fast.runs.assembly import build_model

from .test_train_methods import LEARN, records

# (method, m, the student's branch): m = 3 gives CL-ILR a pair with one child and OKDDip two
# peers and the leader.
CASES = [("cl_ilr", 3, 0), ("okddip", 3, 2)]


def _config(tmp_path, name, *flags):
    return config_from_args(["--out-dir", str(tmp_path / name), "--depth", "8", *flags])


@pytest.mark.slow
@pytest.mark.parametrize("method, m, student", CASES)
def test_learns_evaluates_and_exports_its_student(tmp_path, capsys, method, m, student):
    config = _config(tmp_path, method, *LEARN, "--method", method, "--num-branches", str(m))
    train.run(config)
    final = records(tmp_path / method)[-1]
    assert final["test_acc"][f"branch_{student}"] >= 0.90, final
    assert final["test_acc"]["ensemble"] >= 0.90, final
    assert set(final["test_acc"]) == {*(f"branch_{i}" for i in range(m)), "ensemble"}
    assert set(final["train"]) == {"loss", "ce_branches", "kl"} and final["train"]["kl"] > 0
    capsys.readouterr()

    run_dir = tmp_path / method
    assert evaluate_command.main([str(run_dir), "--json", "--loss"]) == 0, \
        capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == read_metrics(run_dir)[-1]["test_acc"]
    assert set(result["loss_terms"]) == {"loss", "ce_branches", "kl"}

    out = tmp_path / "student.pt2"
    # No --member: the default is the method's student (OKDDip's leader is the last branch).
    assert export_command.main([str(run_dir), "--out", str(out)]) == 0, capsys.readouterr().err
    loaded = load_run(run_dir)
    x = loaded.inputs.normalize(loaded.dataset.test_images[:16])
    with torch.no_grad():
        logits = loaded.model(x)[0]
    exported = export_command.load_exported(out).run(x)
    torch.testing.assert_close(exported, logits[:, student], rtol=1e-5, atol=1e-5)
    # The ensemble (mean logits) in the format that rebuilds the network from its layout.
    ens = tmp_path / "ensemble.pt"
    assert export_command.main([str(run_dir), "--member", "ensemble", "--format", "state_dict",
                                "--out", str(ens)]) == 0, capsys.readouterr().err
    assert "output: logits" in capsys.readouterr().out
    torch.testing.assert_close(export_command.load_exported(ens).run(x), logits.mean(1),
                               rtol=1e-5, atol=1e-5)
    student_net = export_command.extract_branch(loaded.model, student)
    baseline = build_model(config_from_args(["--depth", "8", "--method", "baseline"]), 10)
    assert n_params(student_net) == n_params(baseline)  # the plain network, nothing more


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method, m, student", CASES)
def test_resume_is_bit_exact(tmp_path, method, m, student):
    flags = ("--method", method, "--num-branches", str(m), "--batch-size", "512",
             "--no-progress", "--lr-schedule", "cosine", "--nesterov")
    extra = ("--rampup", "3") if method == "okddip" else ()
    train.run(_config(tmp_path, "straight", *flags, *extra, "--epochs", "2"))
    train.run(_config(tmp_path, "split", *flags, *extra, "--epochs", "1"))
    assert train.main(["--resume", str(tmp_path / "split"), "--epochs", "2"]) == 0
    a = load_checkpoint(tmp_path / "straight")["model"]
    b = load_checkpoint(tmp_path / "split")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["epoch"] for r in records(tmp_path / "split")] == [1, 2]
