"""Every arch through ``python -m one_fast.train --arch ...``: a few steps, resume, bad options."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from one_fast import train
from one_fast.cli.train_flags import parse_flags
from one_fast.config import ARCH_OPTION_FIELDS, MODEL_FIELDS, config_from_flags
from one_fast.data import loaders
from one_fast.engine.checkpoint import load_checkpoint, save_checkpoint
from one_fast.models import ARCHS
from one_fast.models.wrn import WideBlock
from one_fast.runs.assembly import build_model, image_size
from one_fast.runs.resume import ResumeMismatchError

from .test_train import main_error

# Tiny versions of each arch (digits' 16x16 images; ResNet-18 as published, at 16 px, with a
# smaller learning rate: at 0.05 its first steps diverge).
TINY_ARCHS = {
    "wrn": ("--depth", "10", "--width", "1", "--lr", "0.05"),
    "resnext29": ("--depth", "11", "--cardinality", "2", "--base-width", "4",
                  "--widen-factor", "1", "--lr", "0.05"),
    "densenet_bc": ("--depth", "10", "--growth-rate", "4", "--lr", "0.05"),
    "resnet18": ("--num-branches", "2", "--lr", "0.01"),
}
STEPS = ("--batch-size", "256", "--lr-milestones", "", "--no-progress")

def train_losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["train"]["loss"] for line in (run_dir / "metrics.jsonl").open()]


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(TINY_ARCHS))
def test_arch_trains_and_resumes(tmp_path, capsys, arch):
    """One epoch (5 steps), then --resume for a second: finite losses, the second epoch's lower."""
    run_dir = tmp_path / arch
    assert train.main(["--arch", arch, *TINY_ARCHS[arch], "--epochs", "1", "--out-dir",
                       str(run_dir), *STEPS]) == 0
    assert train.main(["--resume", str(run_dir), "--epochs", "2", "--no-progress"]) == 0
    first, second = train_losses(run_dir)
    assert math.isfinite(first) and math.isfinite(second) and second < first, (first, second)
    out = capsys.readouterr().out
    assert f"resumed from {run_dir} after epoch 1" in out and f"--method one, {arch}" in out
    state = load_checkpoint(run_dir)
    assert state["epoch"] == 2 and state["config"]["arch"] == arch


def test_resume_checks_the_arch_and_its_options(tmp_path, capsys):
    run_dir = tmp_path / "wrn"
    assert train.main(["--arch", "wrn", *TINY_ARCHS["wrn"], "--epochs", "1", "--out-dir",
                       str(run_dir), "--batch-size", "1024", "--lr-milestones", "",
                       "--no-progress"]) == 0
    config, _ = train.config_for(parse_flags(["--resume", str(run_dir), "--epochs", "2",
                                              "--width", "2"]))
    with pytest.raises(ResumeMismatchError, match=r"trained with --width 1 \(now 2\)"):
        train.run(config)
    assert set(ARCH_OPTION_FIELDS) <= set(MODEL_FIELDS)
    assert {"arch", "method", "share_stem", "image_size", "svhn_extra"} <= set(MODEL_FIELDS)


def test_arch_option_fields_are_the_archs_options():
    """One config field per option any arch takes (the common ones are fields of their own)."""
    common = {"shared_stages", "gate", "share_stem"}
    options = {name for spec in ARCHS.values() for name in spec.options} - common
    assert set(ARCH_OPTION_FIELDS) == options


def test_another_arch_starts_from_its_own_defaults():
    """The digits preset's ResNet-8 options are not carried to --arch wrn (WRN-28-10 then)."""
    config = config_from_flags(parse_flags(["--arch", "wrn"]))[0]
    assert (config.depth, config.block, config.width) == (None, None, None)
    with torch.device("meta"):  # WRN-28-10: shapes only
        model = build_model(config, 10)
    # WRN-28: (28 - 4) / 6 = 4 blocks in the branch stage, 160 channels each (k = 10)
    blocks = [b for b in model.branches if isinstance(b, WideBlock)]
    assert len(blocks) == 4 and blocks[-1].conv2.weight.shape[0] == 3 * 640
    resnet = config_from_flags(parse_flags([]))[0]
    assert (resnet.depth, resnet.block) == (8, "basic")  # the preset's, as before


@pytest.mark.parametrize("args,match", [
    (["--width", "3"], "--width 3 is not taken by --arch resnet (its options: --depth, --block)"),
    (["--arch", "resnet18", "--depth", "18"], "--depth 18 is not taken by --arch resnet18"),
    (["--arch", "wrn", "--depth", "12"], "--arch wrn (--depth 12): depth"),
    (["--arch", "densenet_bc", "--depth", "11"], "--arch densenet_bc (--depth 11): depth"),
    (["--arch", "resnet", "--shared-stages", "3"],
     r"--shared-stages must be in [0, 2] for --arch resnet, got 3"),
    (["--image-size", "32"], "--image-size 32: --dataset digits has 16x16 images"),
])
def test_bad_arch_options_name_the_flag(tmp_path, capsys, args, match):
    line = main_error(capsys, *args, "--out-dir", str(tmp_path / "r"), "--no-progress")
    assert line.startswith(f"error: {match}"), line


def test_unknown_arch_is_named(tmp_path, capsys):
    line = main_error(capsys, "--arch", "vgg", "--out-dir", str(tmp_path / "r"))
    assert line == ("error: --arch must be one of resnet, wrn, resnext29, densenet_bc, resnet18, "
                    "resnext50_32x4d, got 'vgg'")


def test_image_size_reaches_the_synthetic_dataset(tmp_path, monkeypatch):
    """--image-size (or the arch's own, 224 for the ImageNet archs) sizes the synthetic data."""
    seen = []

    class Stop(Exception):
        pass

    def capture(name, data_dir, download, **kwargs):
        seen.append(kwargs["synthetic_image_size"])
        raise Stop

    monkeypatch.setattr(loaders, "load_dataset", capture)  # what the trainer's loading calls
    for args, want in ((["--arch", "resnet18"], 224), (["--arch", "resnet18", "--image-size",
                                                        "64"], 64), ([], 32)):
        config = config_from_flags(parse_flags(["--dataset", "synthetic", *args, "--out-dir",
                                                str(tmp_path / str(len(seen)))]))[0]
        assert image_size(config) == want
        with pytest.raises(Stop):
            train.run(config)
    assert seen == [224, 64, 32]


@pytest.mark.slow
def test_a_run_saved_before_the_arch_and_method_fields_resumes(tmp_path):
    """A checkpoint whose config predates --arch, --method, ... (the ResNet ONE they default
    to) resumes; setting one of the new fields to another value is still refused."""
    run_dir = tmp_path / "old"
    assert train.main(["--epochs", "1", "--out-dir", str(run_dir), "--batch-size", "1024",
                       "--lr-milestones", "", "--no-progress"]) == 0
    state = load_checkpoint(run_dir)
    new = {"arch", "method", "share_stem", "image_size", "svhn_extra", "teacher",
           "teacher_output", *ARCH_OPTION_FIELDS} - {"depth", "block"}
    state["config"] = {k: v for k, v in state["config"].items() if k not in new}
    save_checkpoint(run_dir, state)
    config, _ = train.config_for(parse_flags(["--resume", str(run_dir), "--epochs", "2",
                                              "--no-share-stem", "--shared-stages", "0"]))
    with pytest.raises(ResumeMismatchError, match=r"--share-stem True \(now False\)"):
        train.run(config)
    assert train.main(["--resume", str(run_dir), "--epochs", "2", "--no-progress"]) == 0
    assert load_checkpoint(run_dir)["epoch"] == 2
