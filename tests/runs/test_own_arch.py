"""The trainer on a network of the user's own (--arch module:PACKAGE.MODULE:FACTORY
--branch-at NAME --arch-kwargs JSON): train on digits, resume bit-exactly, evaluate, export the
student as the user's own class; every bad flag is one error line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from one_fast import evaluate as evaluate_command
from one_fast import export as export_command
from one_fast import train
from one_fast.deploy import load_exported
from one_fast.engine.checkpoint import load_checkpoint
from one_fast.export import extract_branch
from one_fast.runs import load_run

from ..models.own.zoo import ResNet

KWARGS = {"num_classes": 10, "width": 8, "stem_stride": 1}
OWN = ["--arch", "module:tests.models.own.zoo:resnet", "--branch-at", "layer3",
       "--arch-kwargs", json.dumps(KWARGS)]


def flags(run_dir: Path, epochs: int, *extra: str) -> list[str]:
    return [*OWN, "--epochs", str(epochs), "--batch-size", "64", "--lr-milestones", "2",
            "--rampup", "3", "--no-progress", "--out-dir", str(run_dir), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-epoch run straight through, and the same run stopped after 2 epochs and resumed."""
    root = tmp_path_factory.mktemp("own_arch")
    assert train.main(flags(root / "straight", 3)) == 0
    assert train.main(flags(root / "split", 2)) == 0
    assert train.main(["--resume", str(root / "split"), "--epochs", "3", "--no-progress"]) == 0
    return root


def test_the_run_records_the_network_and_resumes_bit_exactly(runs):
    straight, split = load_checkpoint(runs / "straight"), load_checkpoint(runs / "split")
    config = straight["config"]
    assert config["arch"] == "module:tests.models.own.zoo:resnet"
    assert config["branch_at"] == "layer3" and json.loads(config["arch_kwargs"]) == KWARGS
    assert straight["model"].keys() == split["model"].keys()
    assert "branches.layer3.conv1.weight" in straight["model"]
    for key, value in straight["model"].items():
        assert torch.equal(value, split["model"][key]), key
    records = [json.loads(line) for line in (runs / "straight" / "metrics.jsonl").open()]
    assert records[-1]["test_acc"]["ensemble"] > 0.8  # it learns (chance is 0.1)


def test_evaluate_reproduces_the_last_record(runs, capsys):
    assert evaluate_command.main([str(runs / "split"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["matches_recorded"] is True
    assert set(result["accuracy"]) == {"branch_0", "branch_1", "branch_2", "ensemble"}


@pytest.mark.parametrize("fmt", ["state_dict", "pt2"])
def test_export_writes_the_student_as_the_user_s_class(runs, tmp_path, capsys, fmt):
    out = tmp_path / f"student.{fmt}"
    assert export_command.main([str(runs / "split"), "--member", "1", "--format", fmt,
                                "--out", str(out)]) == 0, capsys.readouterr().err
    run = load_run(runs / "split")
    x = run.inputs.normalize(run.dataset.test_images[:16])
    with torch.no_grad():
        expected = run.model(x)[0][:, 1]
        student = extract_branch(run.model, 1)
        assert type(student) is ResNet
        fresh = ResNet(**KWARGS)
        fresh.load_state_dict(student.state_dict(), strict=True)
        torch.testing.assert_close(fresh.eval()(x), expected)
        exported = load_exported(out)
        torch.testing.assert_close(exported.run(x), expected)
    assert exported.meta["arch"] == "module:tests.models.own.zoo:resnet"
    assert exported.meta["params"] == sum(p.numel() for p in fresh.parameters())


def test_export_the_ensemble(runs, tmp_path, capsys):
    out = tmp_path / "ensemble.pt2"
    assert export_command.main([str(runs / "split"), "--member", "ensemble", "--out",
                                str(out)]) == 0, capsys.readouterr().err
    run = load_run(runs / "split")
    x = run.inputs.normalize(run.dataset.test_images[:16])
    with torch.no_grad():
        logits, gate = run.model(x)
        torch.testing.assert_close(load_exported(out).run(x),
                                   torch.einsum("nm,nmc->nc", gate, logits))


@pytest.mark.parametrize("args, message", [
    (["--arch", "module:no_such_package.models:net", "--branch-at", "layer4"],
     "--arch module:no_such_package.models:net: cannot import 'no_such_package.models'"),
    (["--arch", "module:tests.models.own.zoo:nothing", "--branch-at", "layer4"],
     "module 'tests.models.own.zoo' has no function or class 'nothing'"),
    (["--arch", "module:tests.models.own.zoo", "--branch-at", "layer4"],
     "a network of your own is named module:PACKAGE.MODULE:FACTORY"),
    (["--arch", "module:tests.models.own.zoo:resnet", "--branch-at", "layer9"],
     "--branch-at layer9: at='layer9' names no submodule of ResNet; its top-level children: "
     "conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4, avgpool, fc"),
    (["--arch", "module:tests.models.own.zoo:resnet"], "needs --branch-at NAME"),
    (["--arch", "module:tests.models.own.zoo:resnet", "--branch-at", "layer4",
      "--arch-kwargs", "{num_classes: 10}"], "--arch-kwargs must be a JSON object"),
    (["--arch", "module:tests.models.own.zoo:resnet", "--branch-at", "layer4",
      "--arch-kwargs", '{"num_classes": 7}'],
     "the network gives 7 logits, the dataset has 10 classes"),
    (["--arch", "module:tests.models.own.zoo:resnet", "--branch-at", "layer4",
      "--arch-kwargs", '{"classes": 10}'], "unexpected keyword argument 'classes'"),
    (["--arch", "module:tests.models.own.zoo:resnet", "--branch-at", "layer4", "--depth", "20"],
     "--depth 20 is not taken by --arch module:tests.models.own.zoo:resnet"),
    (["--branch-at", "layer4"], "--branch-at is only taken by --arch module:"),
], ids=["no-module", "no-factory", "malformed", "bad-branch-at", "no-branch-at", "bad-json",
        "wrong-classes", "bad-kwarg", "arch-option", "branch-at-builtin"])
def test_bad_flags_are_one_error_line(tmp_path, capsys, args, message):
    assert train.main([*args, "--epochs", "1", "--out-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
