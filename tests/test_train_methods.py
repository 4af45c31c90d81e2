"""Every method through ``python -m one_fast.train --method ...``: learning, the baseline's plain
cross-entropy, kd from a teacher run, independent members, and the flags' errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from one_fast import train
from one_fast.cli.train_flags import config_from_args, parse_flags
from one_fast.config import config_from_flags
from one_fast.data import load_dataset, loaders_for
from one_fast.engine.checkpoint import load_checkpoint
from one_fast.runs.assembly import build_model

from .test_train import cli, main_error

# A few digits epochs that reach > 90% (the LR decays for the last epoch).
LEARN = ("--epochs", "4", "--lr-milestones", "3", "--batch-size", "64", "--no-progress")


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def trained(tmp_path: Path, name: str, *args: str) -> list[dict]:
    result = cli("--out-dir", str(tmp_path / name), *LEARN, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return records(tmp_path / name)


@pytest.mark.slow
def test_one_teaches_a_kd_student(tmp_path):
    """A two-branch ONE run learns; a kd student distilled from its ensemble learns too, its
    checkpoint and optimizer holding the student alone."""
    one = trained(tmp_path, "one", "--num-branches", "2")
    assert one[-1]["test_acc"]["branch_0"] >= 0.90, one[-1]
    assert set(one[-1]["train"]) == {"loss", "ce_branches", "ce_ensemble", "kl"}

    kd = trained(tmp_path, "kd", "--method", "kd", "--teacher", str(tmp_path / "one"))
    final = kd[-1]
    assert final["test_acc"]["branch_0"] >= 0.90, final
    assert set(final["test_acc"]) == {"branch_0"}  # a student alone: no ensemble
    assert set(final["train"]) == {"loss", "ce_branches", "kl"} and final["train"]["kl"] > 0
    assert kd[0]["costs"]["teacher_flops"] > kd[0]["costs"]["student_flops"]
    state = load_checkpoint(tmp_path / "kd")
    assert state["config"]["num_branches"] == 1  # kd's requirement, applied without a flag
    student = build_model(config_from_args(["--method", "kd", "--teacher", str(tmp_path / "one")]),
                          10)
    assert state["model"].keys() == student.state_dict().keys()  # no teacher tensors
    momentum = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert len(momentum) == len(list(student.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dml", "ensemble"])
def test_independent_members_learn(tmp_path, method):
    final = trained(tmp_path, method, "--method", method, "--num-branches", "2")[-1]
    assert final["test_acc"]["branch_0"] >= 0.90, final
    assert set(final["test_acc"]) == {"branch_0", "branch_1", "ensemble"}
    terms = {"dml": {"loss", "ce_branches", "kl"}, "ensemble": {"loss", "ce_branches"}}
    assert set(final["train"]) == terms[method]


@pytest.mark.slow
def test_baseline_learns(tmp_path):
    logged = trained(tmp_path, "baseline", "--method", "baseline")
    final = logged[-1]
    assert final["test_acc"]["branch_0"] >= 0.90, final
    assert set(final["test_acc"]) == {"branch_0"}
    assert logged[0]["costs"]["num_branches"] == 1 and "costs" not in final


def test_baseline_logs_the_plain_cross_entropy_of_its_network(tmp_path):
    """One step: the logged loss is CE(z, y) of the freshly initialised network on the first
    batch (not ONE's 2 x CE at m = 1), recomputed here from the same seed."""
    config = dataclasses.replace(
        config_from_flags({"method": "baseline"})[0], epochs=1, batch_size=1024,
        lr_milestones=(), progress=False, out_dir=str(tmp_path / "run"))
    record = train.run(config)
    torch.manual_seed(config.seed)  # as the trainer: seed, then build
    model = build_model(config, 10)
    data = load_dataset("digits")
    loader, _ = loaders_for(data, 1024, device="cpu", seed=config.seed)
    x, y = next(iter(loader.epoch_batches(0)))
    with torch.no_grad():
        logits, _ = model(x)
    ce = F.cross_entropy(logits[:, 0], y).item()
    assert record["train"] == pytest.approx({"loss": ce, "ce_branches": ce}, rel=1e-5)


@pytest.mark.parametrize("method", ["dml", "ensemble"])
def test_independent_methods_build_independent_members(method):
    """The trainer's network for dml/ensemble shares nothing and has no gate (the library
    tests show such members independent and batched == per-branch)."""
    config = config_from_flags(parse_flags(["--method", method]))[0]
    assert (config.shared_stages, config.share_stem, config.gate) == (0, False, False)
    model = build_model(config, 10)
    assert {model.tensor_owner(name) for name in model.state_dict()} == {"branches"}


def test_no_share_stem_one_is_independent_branches_with_a_gate():
    config = config_from_flags(parse_flags(["--shared-stages", "0", "--no-share-stem"]))[0]
    model = build_model(config, 10)
    owners = {name: model.tensor_owner(name) for name in model.state_dict()}
    assert set(owners.values()) == {"branches", "gate"}
    assert all(k.startswith("gate_") for k, owner in owners.items() if owner == "gate")


@pytest.mark.parametrize("args,match", [
    (["--method", "baseline", "--num-branches", "3"],
     "--method baseline needs --num-branches 1"),
    (["--method", "kd", "--teacher", "x", "--num-branches", "2"],
     "--method kd needs --num-branches 1"),
    (["--method", "dml", "--shared-stages", "2"], "--method dml needs --shared-stages 0"),
    (["--method", "ensemble", "--gate"], "--method ensemble needs --no-gate"),
    (["--method", "dml", "--num-branches", "1"], "--method dml needs --num-branches >= 2"),
    (["--method", "kd"], "--method kd needs --teacher RUN_DIR"),
    (["--teacher", "x"], "--teacher is only used by --method kd"),
    (["--method", "kd", "--teacher", "x", "--teacher-output", "best"],
     "--teacher-output must be ensemble or a branch index"),
    (["--no-share-stem"], "--no-share-stem needs --shared-stages 0"),
])
def test_conflicting_method_flags_are_named(tmp_path, capsys, args, match):
    line = main_error(capsys, *args, "--out-dir", str(tmp_path / "r"))
    assert line.startswith(f"error: {match}"), line
    assert not (tmp_path / "r").exists()


def test_kd_teacher_errors_name_the_flag(tmp_path, capsys):
    line = main_error(capsys, "--method", "kd", "--teacher", str(tmp_path / "none"),
                      "--out-dir", str(tmp_path / "r"), "--no-progress")
    assert line.startswith(f"error: --teacher {tmp_path / 'none'}: no checkpoint"), line


def test_one_without_distillation_computes_no_kl(tmp_path, monkeypatch):
    """--kl-weight 0: ONE's loss is sum_i CE(z_i) + CE(z_e), the KL terms never formed."""
    from one_fast.methods import one

    def refuse(*args, **kwargs):
        raise AssertionError("the ONE loss with its KL terms was computed")

    monkeypatch.setattr(one, "one_loss", refuse)
    config = dataclasses.replace(
        config_from_flags({"kl_weight": 0.0})[0], epochs=1, batch_size=512,
        lr_milestones=(), progress=False, out_dir=str(tmp_path / "run"))
    record = train.run(config)
    terms = record["train"]
    assert terms["kl"] == 0.0
    assert terms["loss"] == pytest.approx(terms["ce_branches"] + terms["ce_ensemble"], rel=1e-6)
