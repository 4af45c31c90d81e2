"""Config presets, generated flags and the schedules they drive."""

from __future__ import annotations

import dataclasses
import math

import pytest

from one_fast.cli.train_flags import build_parser, config_from_args, parse_flags
from one_fast.config import (
    GROUPS,
    TrainConfig,
    config_from_dict,
    config_from_flags,
    config_to_dict,
    validate_config,
)
from one_fast.engine.schedule import kl_weight, learning_rate
from one_fast.models import ARCHS
from one_fast.runs.assembly import build_method


def test_cifar100_preset_is_the_authors_recipe():
    c = config_from_args(["--dataset", "cifar100"])
    assert (c.arch, c.depth, c.block, c.num_branches, c.gate) == ("resnet", 32, "basic", 3, True)
    assert (c.method, c.share_stem, c.shared_stages) == ("one", True, None)  # None: the arch's
    assert ARCHS["resnet"].options["shared_stages"].default == 2
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == (300, 128, 0.1, 0.9, 1e-4)
    assert (c.lr_milestones, c.lr_decay, c.rampup) == ((150, 225), 0.1, 80)
    assert c.temperature is None and build_method(c).temperature == 3.0  # ONE's T = 3
    assert c.detach_teacher


def test_flags_override_the_preset():
    c = config_from_args(["--dataset", "cifar100", "--epochs", "5", "--lr-milestones", "",
                          "--no-gate", "--rampup", "0"])
    assert (c.epochs, c.lr_milestones, c.gate, c.rampup, c.depth) == (5, (), False, 0, 32)


def test_every_field_has_help_and_round_trips():
    groups = {name for name, _ in GROUPS}
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"].strip() and f.metadata["group"] in groups, f.name
    c = config_from_args(["--dataset", "cifar10"])
    assert config_from_dict(config_to_dict(c)) == c
    with pytest.raises(ValueError, match="unknown config fields: \\['colour'\\]"):
        config_from_dict({"colour": 1})


def test_help_lists_every_flag_with_its_help_under_its_group():
    """--help is generated from the fields' metadata: each group's section holds exactly its
    fields' flags, each with its help text and the preset's default."""
    parser = build_parser("cifar100")
    sections = {group.title: group for group in parser._action_groups}
    for name, title in GROUPS:
        flags = {a.option_strings[0] for a in sections[title]._group_actions}
        assert flags == {"--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)
                         if f.metadata["group"] == name}, name
    text = " ".join(parser.format_help().split())
    assert "Peak SGD learning rate. (default: 0.1)" in text
    assert "Epochs to train. (default: 300)" in text  # the cifar100 preset's value
    assert "--no-gate" in text and "taken by resnet: " in text


def test_learning_rate_steps_at_milestones():
    lrs = [learning_rate(e, 0.1, (150, 225), 0.1) for e in (0, 149, 150, 224, 225, 299)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_kl_rampup_follows_exp_minus_5_one_minus_t_squared():
    assert kl_weight(0, 1.0, 80) == pytest.approx(math.exp(-5.0))
    assert kl_weight(40, 2.0, 80) == pytest.approx(2.0 * math.exp(-5.0 * 0.25))
    assert kl_weight(80, 1.0, 80) == 1.0 and kl_weight(200, 1.0, 80) == 1.0
    assert kl_weight(0, 0.7, 0) == 0.7  # --rampup 0 disables the ramp


def test_every_field_declares_its_group_and_numbers_their_range():
    groups = {name for name, _ in GROUPS}
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("group") in groups, f.name
        if str(f.type).split(" ")[0] in ("int", "float", "tuple[int,"):
            assert f.metadata.get("within") is not None, f.name


@pytest.mark.parametrize("changes,match", [
    (dict(kl_weight=-5.0), "--kl-weight must be >= 0, got -5"),
    (dict(lr_decay=0.0), r"--lr-decay must be in \(0, 1\], got 0"),
    (dict(lr_decay=1.5), r"--lr-decay must be in \(0, 1\]"),
    (dict(momentum=-1.0), r"--momentum must be in \[0, 1\), got -1"),
    (dict(momentum=1.0), r"--momentum must be in \[0, 1\)"),
    (dict(temperature=0.0), "--temperature must be > 0, got 0"),
    (dict(temperature=float("nan")), "--temperature must be > 0, got nan"),
    (dict(weight_decay=-1e-4), "--weight-decay must be >= 0"),
    (dict(lr=float("inf")), "--lr must be > 0, got inf"),
    (dict(lr_milestones=(8, 4)), "--lr-milestones must be strictly increasing, got 8,4"),
    (dict(lr_milestones=(0, 4)), "--lr-milestones must be >= 1, got 0,4"),
    (dict(lr_milestones=(8, 20)), "--lr-milestones 8,20 go beyond --epochs 12"),
    (dict(shared_stages=3), r"--shared-stages must be in \[0, 2\] for --arch resnet, got 3"),
    (dict(shared_stages=4), r"--shared-stages must be in \[0, 3\], got 4"),
    (dict(block="wide"), "--block must be one of basic, bottleneck, got 'wide'"),
    (dict(device="tpu"), "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (dict(device="cuda:x"), "--device must be"),
])
def test_values_outside_their_range_name_the_flag(changes, match):
    with pytest.raises(ValueError, match=match):
        validate_config(dataclasses.replace(TrainConfig(), **changes))


def test_epochs_alone_scales_the_presets_schedule():
    config, notes = config_from_flags(parse_flags(["--dataset", "cifar100", "--epochs", "50"]))
    assert config.lr_milestones == (25, 38) and config.rampup == 13
    assert len(notes) == 2 and "--epochs 50: LR milestones scaled from the preset's 150,225 " \
        "(of 300 epochs) to 25,38; set --lr-milestones to choose them" in notes
    config, notes = config_from_flags(parse_flags(
        ["--dataset", "cifar100", "--epochs", "50", "--lr-milestones", "10,20", "--rampup", "5"]))
    assert (config.lr_milestones, config.rampup, notes) == ((10, 20), 5, [])
    assert config_from_flags(parse_flags(["--epochs", "12"]))[1] == []  # the preset's own


def test_resume_continues_in_the_resumed_folder():
    assert config_from_args(["--resume", "exp/a"]).out_dir == "exp/a"
    assert config_from_args(["--resume", "exp/a/checkpoint.pt"]).out_dir == "exp/a"
    assert config_from_args(["--resume", "exp/a", "--out-dir", "exp/b"]).out_dir == "exp/b"


def test_svhn_preset_is_the_authors_recipe_with_a_scaled_rampup():
    c = config_from_args(["--dataset", "svhn"])
    assert (c.dataset, c.svhn_extra, c.depth, c.epochs, c.batch_size) == ("svhn", True, 32, 40, 128)
    assert (c.lr, c.momentum, c.lr_milestones) == (0.1, 0.9, (20, 30))
    # 80 of CIFAR's 300 epochs -> 11 of 40: the KL weight reaches --kl-weight before the end
    assert c.rampup == 11 and kl_weight(c.epochs - 1, 1.0, c.rampup) == 1.0
    assert kl_weight(39, 1.0, 80) == pytest.approx(0.27, abs=0.005)  # what 80 would have given
