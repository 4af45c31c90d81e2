"""Config presets, generated flags and the schedules they drive."""

from __future__ import annotations

import math

import pytest

from one_fast.config import (
    TrainConfig,
    config_from_args,
    config_from_dict,
    config_to_dict,
    field_comments,
)
from one_fast.engine.schedule import kl_weight, learning_rate


def test_cifar100_preset_is_the_authors_recipe():
    c = config_from_args(["--dataset", "cifar100"])
    assert (c.depth, c.block, c.num_branches, c.shared_stages, c.gate) == (32, "basic", 3, 2, True)
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == (300, 128, 0.1, 0.9, 1e-4)
    assert (c.lr_milestones, c.lr_decay, c.temperature, c.rampup) == ((150, 225), 0.1, 3.0, 80)
    assert c.detach_teacher


def test_flags_override_the_preset():
    c = config_from_args(["--dataset", "cifar100", "--epochs", "5", "--lr-milestones", "",
                          "--no-gate", "--rampup", "0"])
    assert (c.epochs, c.lr_milestones, c.gate, c.rampup, c.depth) == (5, (), False, 0, 32)


def test_every_field_has_help_and_round_trips():
    comments = field_comments()
    assert set(comments) == set(vars(TrainConfig()))
    assert all(comments.values())
    c = config_from_args(["--dataset", "cifar10"])
    assert config_from_dict(config_to_dict(c)) == c
    with pytest.raises(ValueError, match="unknown config fields: \\['colour'\\]"):
        config_from_dict({"colour": 1})


def test_learning_rate_steps_at_milestones():
    lrs = [learning_rate(e, 0.1, (150, 225), 0.1) for e in (0, 149, 150, 224, 225, 299)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_kl_rampup_follows_exp_minus_5_one_minus_t_squared():
    assert kl_weight(0, 1.0, 80) == pytest.approx(math.exp(-5.0))
    assert kl_weight(40, 2.0, 80) == pytest.approx(2.0 * math.exp(-5.0 * 0.25))
    assert kl_weight(80, 1.0, 80) == 1.0 and kl_weight(200, 1.0, 80) == 1.0
    assert kl_weight(0, 0.7, 0) == 0.7  # --rampup 0 disables the ramp
