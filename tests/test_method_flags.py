"""One table of which method reads which flag: the config check refuses the others, naming the
flag, and --help says who reads each; plus the cosine schedule and the okd preset."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from one_fast import train
from one_fast.cli.train_flags import build_parser, parse_flags
from one_fast.config import PRESETS, TrainConfig, config_from_flags
from one_fast.engine.schedule import learning_rate
from one_fast.methods import METHODS, READERS

from .test_train import main_error


@pytest.mark.parametrize("args, match", [
    (["--method", "ensemble", "--kl-weight", "2"],
     "--kl-weight is only used by --method dml, kd, okddip, one (this run is --method "
     "ensemble)"),
    (["--method", "baseline", "--temperature", "5"], "--temperature is only used by --method"),
    (["--method", "baseline", "--rampup", "3"], "--rampup is only used by --method"),
    (["--method", "ensemble", "--teacher-output", "0"],
     "--teacher-output is only used by --method kd"),
    (["--method", "baseline", "--no-gate"], "--gate is only used by --method one"),
    (["--method", "cl_ilr", "--kl-weight", "0.5"], "--kl-weight is only used by --method"),
    (["--method", "cl_ilr", "--rampup", "10"], "--rampup is only used by --method"),
    (["--method", "okddip", "--no-detach-teacher"],
     "--detach-teacher is only used by --method one"),
    (["--method", "cl_ilr", "--gate"], "--method cl_ilr needs --no-gate"),
    (["--method", "okddip", "--shared-stages", "1"], "--method okddip needs --shared-stages 2"),
    (["--method", "cl_ilr", "--num-branches", "1"], "--method cl_ilr needs --num-branches >= 2"),
    (["--method", "one", "--num-branches", "1"],
     "--method one needs --num-branches >= 2 (m branches distilled from their gated "
     "ensemble); one network on plain cross-entropy is --method baseline"),
    (["--lr-schedule", "cosine", "--lr-milestones", "3"],
     "--lr-milestones is read by --lr-schedule step only"),
    (["--lr-schedule", "cosine", "--lr-decay", "0.5"],
     "--lr-decay is read by --lr-schedule step only"),
    (["--method", "cl_ilr", "--arch", "wrn"], "--arch wrn"),
])
def test_contradicting_flags_are_one_error_naming_the_flag(tmp_path, capsys, args, match):
    line = main_error(capsys, *args, "--out-dir", str(tmp_path / "r"))
    assert line.startswith("error: ") and match in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args", [
    ["--method", "dml", "--no-gate", "--shared-stages", "0", "--no-share-stem"],
    ["--method", "okddip", "--no-gate", "--shared-stages", "2", "--rampup", "80",
     "--temperature", "3", "--kl-weight", "1"],
    ["--method", "cl_ilr", "--temperature", "2"],
    ["--dataset", "cifar100", "--method", "baseline"],  # the preset's ramp-up is not a flag
    ["--preset", "okd", "--method", "dml", "--temperature", "2"],
])
def test_flags_a_method_reads_or_fixes_are_accepted(args):
    config_from_flags(parse_flags(args))


def test_the_table_names_config_fields_and_methods():
    names = {f.name for f in fields(TrainConfig)}
    assert set(READERS) <= names
    for readers in READERS.values():
        assert readers <= set(METHODS)


def test_help_says_which_methods_read_a_flag():
    text = " ".join(build_parser().format_help().split())
    assert "--teacher-output TEACHER-OUTPUT" in text or "--teacher-output" in text
    for field, readers in READERS.items():
        assert f"Read by --method {', '.join(sorted(readers))} only." in text, field
    assert "cl_ilr" in text and "okddip" in text and "--lr-schedule {step,cosine}" in text


def test_cosine_schedule_is_mcl_okds_sgdr_over_the_run():
    def sgdr(epoch, t0, eta_max):  # that code's adjust_lr with lr_type 'SGDR', eta_min 0
        i = int(math.log2(epoch / t0 + 1))
        t_cur, t_i = epoch - t0 * (2**i - 1), t0 * 2**i
        return 0.5 * eta_max * (1 + math.cos(math.pi * t_cur / t_i))

    for epoch in (0, 1, 75, 150, 299):
        assert learning_rate(epoch, 0.1, (150, 225), 0.1, schedule="cosine", epochs=300) == \
            pytest.approx(sgdr(epoch, 300, 0.1), rel=1e-12, abs=1e-15)
    assert learning_rate(150, 0.1, (150, 225), 0.1) == pytest.approx(0.01)  # step unchanged
    with pytest.raises(ValueError, match="schedule must be one of step, cosine"):
        learning_rate(0, 0.1, (), 0.1, schedule="linear")


def test_okd_preset_is_the_mcl_okd_protocol():
    config = config_from_flags(parse_flags(["--preset", "okd"]))[0]
    assert (config.dataset, config.num_branches, config.epochs, config.batch_size) == \
        ("cifar100", 4, 300, 128)
    assert (config.lr, config.momentum, config.nesterov, config.weight_decay) == \
        (0.1, 0.9, True, 5e-4)
    assert config.lr_schedule == "cosine" and config.rampup == 0
    assert PRESETS["okd"]["depth"] == 32


def test_a_cosine_run_logs_the_cosine_learning_rate(tmp_path):
    config = config_from_flags(parse_flags([
        "--lr-schedule", "cosine", "--nesterov", "--epochs", "2", "--batch-size", "512",
        "--no-progress", "--depth", "8", "--num-branches", "2",
        "--out-dir", str(tmp_path / "run")]))[0]
    record = train.run(config)
    assert record["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 2)))
