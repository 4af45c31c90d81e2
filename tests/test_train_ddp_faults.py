"""Multi-process runs a researcher can trust (CPU, gloo, 2 processes through torchrun): the
model evaluated is the model saved, a non-finite loss on one rank stops every rank at the same
step, and a worker killed mid-run costs nothing under torchrun's elastic restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from one_fast import evaluate
from one_fast.engine.checkpoint import load_checkpoint
from one_fast.runs.loading import load_run

ROOT = Path(__file__).resolve().parents[1]
# ResNet-8 on digits, 32 images per step on each rank: an epoch takes about a second.
SMALL = ("--depth", "8", "--batch-size", "32", "--no-progress")


def torchrun(*args: str, port: int, max_restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--max-restarts={max_restarts}", f"--master_port={port}", *args]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), out.get("PYTHONPATH", "")])
    out["OMP_NUM_THREADS"] = "1"
    return out


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


@pytest.mark.slow
def test_ddp_run_evaluates_the_model_it_saves(tmp_path):
    """Without --sync-bn each rank updates its own BatchNorm statistics; the run must log the
    accuracy of rank 0's (the checkpoint's), so `evaluate` reproduces the record exactly."""
    out = tmp_path / "ddp"
    result = subprocess.run(torchrun("-m", "one_fast.train", "--epochs", "2", *SMALL,
                                     "--out-dir", str(out), port=29541),
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    last = records(out)[-1]
    evaluated = evaluate.evaluate_run(load_run(out), device="cpu")
    assert evaluated["accuracy"] == last["test_acc"]
    assert evaluated["matches_recorded"] is True
    provenance = json.loads((out / "run.json").read_text())
    assert provenance["status"] == "finished" and provenance["epochs_finished"] == 2
    (invocation,) = provenance["invocations"]
    assert invocation["world_size"] == 2 and len(invocation["devices"]) == 2


@pytest.mark.slow
def test_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Rank 1's loss turns NaN at its step 3 (tests/ddp_poison.py): both ranks stop there with
    the same one-line message, none waits for the other."""
    out = tmp_path / "nan"
    result = subprocess.run(torchrun(str(ROOT / "tests" / "ddp_poison.py"), "--epochs", "2",
                                     *SMALL, "--out-dir", str(out), port=29542),
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env())
    assert result.returncode != 0
    lines = [line.split("error: ", 1)[1] for line in result.stderr.splitlines()
             if "error: non-finite loss" in line]
    assert len(lines) == 2, result.stderr[-3000:]  # rank 0's loss was finite at that step
    assert lines[0] == lines[1] and lines[0].startswith("non-finite loss at epoch 1, step 3:")


def _kill_rank_1_once_epoch_1_is_saved(proc: subprocess.Popen, out: Path) -> None:
    """Wait for epoch 1's checkpoint, then SIGKILL the worker of rank 1 (epoch 2 is running)."""
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.json").is_file():
        assert time.monotonic() < deadline and proc.poll() is None, "epoch 1 never finished"
        time.sleep(0.01)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == proc.pid and b"RANK=1" in environ:
            os.kill(int(pid), signal.SIGKILL)
            return
    raise AssertionError("no worker of rank 1 found")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker in /proc")
def test_a_killed_worker_costs_nothing_under_elastic_restarts(tmp_path):
    """torchrun --max-restarts=1: a worker SIGKILLed during epoch 2 is restarted with its group,
    the trainer continues from the run folder's checkpoint by itself, and the run ends exactly
    as an uninterrupted one."""
    args = ("-m", "one_fast.train", "--epochs", "2", *SMALL)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(torchrun(*args, "--out-dir", str(straight), port=29543), cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env())
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(torchrun(*args, "--out-dir", str(killed), port=29544,
                                     max_restarts=1),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env())
    try:
        _kill_rank_1_once_epoch_1_is_saved(proc, killed)
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert "torchrun restarted the workers (restart 1): continuing from" in output
    a, b = records(straight), records(killed)
    assert [r["epoch"] for r in b] == [1, 2]
    for x, y in zip(a, b, strict=True):
        assert (x["step"], x["train"], x["test_acc"]) == (y["step"], y["train"], y["test_acc"])
    weights_a, weights_b = load_checkpoint(straight)["model"], load_checkpoint(killed)["model"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    invocations = json.loads((killed / "run.json").read_text())["invocations"]
    assert [i["status"] for i in invocations][-1] == "finished"
    assert invocations[-1]["elastic_restart"] == 1 and invocations[-1]["from_epoch"] == 1
