"""torchrun + --compile (the CUDA default) on the CPU with gloo: DDP and torch.compile together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_two_gloo_processes_with_compile(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29534", "-m", "one_fast.train", "--compile", "--epochs", "1",
           "--batch-size", "128", "--no-progress", "--out-dir", str(out)]
    # DDPOptimizer logs (at INFO) each graph it splits at DDP's gradient buckets.
    env = {**os.environ, "TORCH_LOGS": "+torch._dynamo.backends.distributed"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 2" in result.stdout and "compile True" in result.stdout
    # Each rank compiled the network inside DDP through DDPOptimizer, so the compiled backward
    # hands gradients to DDP bucket by bucket (what lets the all-reduces overlap it).
    split = [line for line in result.stderr.splitlines() if "DDPOptimizer used bucket cap" in line]
    for rank in (0, 1):
        assert any(line.startswith(f"[rank{rank}]") for line in split), result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert len(records) == 1 and records[0]["step"] == 5  # as in the eager DDP test
    assert records[0]["train"]["loss"] > 0 and "test_acc" in records[0]
