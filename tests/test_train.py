"""The trainer end to end on the CPU: learning, exact resume, compile, DDP, failure handling."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from one_fast import train
from one_fast.config import TrainConfig, config_from_args
from one_fast.engine.checkpoint import CheckpointError, load_checkpoint
from one_fast.engine.step import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]


def quick(tmp_path: Path, **overrides) -> TrainConfig:
    """A few-second digits run: ResNet-8, big batches, no progress bar."""
    values = dict(epochs=2, batch_size=256, lr_milestones=(), out_dir=str(tmp_path / "run"),
                  progress=False)
    values.update(overrides)
    return dataclasses.replace(config_from_args([]), **values)


@pytest.mark.slow
def test_default_command_learns_digits(tmp_path):
    """The README's main command (defaults) must reach >= 90% ensemble test accuracy."""
    result = subprocess.run(
        [sys.executable, "-m", "one_fast.train", "--fused", "--no-progress",
         "--out-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert result.returncode == 0, result.stderr
    assert "--fused: no CUDA device" in result.stdout  # says what it uses instead
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(records) == 12
    final = records[-1]["test_acc"]
    assert final["ensemble"] >= 0.90, final
    assert all(final[f"branch_{i}"] >= 0.85 for i in range(3)), final
    assert "ensemble" in result.stdout and (tmp_path / "run" / "curves.png").stat().st_size > 1000


def params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir)["model"]


def test_resume_is_exact(tmp_path):
    straight = quick(tmp_path, out_dir=str(tmp_path / "straight"), epochs=2, rampup=3)
    train.run(straight)
    first = quick(tmp_path, out_dir=str(tmp_path / "split"), epochs=1, rampup=3)
    train.run(first)
    resumed = quick(tmp_path, out_dir=str(tmp_path / "split"), epochs=2, rampup=3,
                    resume=str(tmp_path / "split"))
    train.run(resumed)
    a, b = params(tmp_path / "straight"), params(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_resume_rejects_other_model(tmp_path):
    cfg = quick(tmp_path, epochs=1)
    train.run(cfg)
    other = quick(tmp_path, epochs=2, depth=14, num_branches=2, resume=cfg.out_dir)
    with pytest.raises(CheckpointError, match="depth: checkpoint=8, requested=14"):
        train.run(other)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    cfg = quick(tmp_path, epochs=1)
    train.run(cfg)
    ckpt = Path(cfg.out_dir) / "checkpoint.pt"
    before = ckpt.read_bytes()

    real = train.make_criterion

    def poisoned(config, backend):
        criterion = real(config, backend)

        def nan_loss(logits, gate, y, w):
            return criterion(logits * float("nan"), gate, y, w)
        return nan_loss

    monkeypatch.setattr(train, "make_criterion", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 1"):
        train.run(quick(tmp_path, epochs=2, resume=cfg.out_dir))
    assert ckpt.read_bytes() == before


def test_fused_on_cpu_says_what_it_uses(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    train.run(quick(tmp_path, epochs=1, fused=True))
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("--fused: no CUDA device")


def test_bad_flags_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--epochs must be >= 1"):
        train.run(quick(tmp_path, epochs=0))
    with pytest.raises(ValueError, match="--cuda-graphs needs a CUDA device"):
        train.run(quick(tmp_path, cuda_graphs=True))
    with pytest.raises(ValueError, match="--amp must be bf16 or none"):
        train.run(quick(tmp_path, amp="fp8"))
    with pytest.raises(SystemExit):
        config_from_args(["--lr-milestones", "a,b"])


def test_help_lists_every_field():
    out = subprocess.run([sys.executable, "-m", "one_fast.train", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for name in vars(TrainConfig()):
        assert "--" + name.replace("_", "-") in out, name


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29533", "-m", "one_fast.train", "--epochs", "1", "--batch-size", "128",
           "--no-progress", "--out-dir", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 2" in result.stdout
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["checkpoint.pt"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert len(records) == 1  # rank 0 alone logs
    # Each rank took floor(shard / 128) steps of 128 images: 1437 images -> 718 per rank -> 5.
    assert records[0]["step"] == 5
