"""Ctrl-C of the table runner alone (``kill -INT`` of its process, not of its group): the
runner passes it on to the trainer it waits for and says truthfully what became of that run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from one_fast.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sigint_to_the_runner_alone_reaches_its_trainer(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "one_fast.experiments", "branches", "--dataset", "digits",
               "--only", "digits-resnet32-m1", "--seeds", "0", "--epochs", "200",
               "--precision", "none", "--out-dir", str(tmp_path), "--", "--depth", "8",
               "--batch-size", "512"]
    # SIGINT restored for the runner, whatever this test process was started with; a session
    # of its own, so that a failing test can end the runner and its trainer together.
    runner = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    folder = tmp_path / "branches" / "digits-resnet32-m1" / "fp32-e200"
    log = folder / "seed0.log"
    try:
        deadline = time.monotonic() + 120
        while not any(line.split()[:2] == ["epoch", "2/200"]
                      for line in (log.read_text() if log.is_file() else "").splitlines()):
            assert time.monotonic() < deadline and runner.poll() is None, "no epoch finished"
            time.sleep(0.05)
        began = time.monotonic()
        os.kill(runner.pid, signal.SIGINT)  # the runner's process only
        out, err = runner.communicate(timeout=120)
        waited = time.monotonic() - began
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 130, err
    assert waited < 30  # the trainer stopped by itself; it was not waited out and killed
    saved = load_checkpoint(folder / "seed0")["epoch"]
    assert err.strip().splitlines()[-1] == (
        f"interrupted: digits-resnet32-m1 seed 0 (exit code 130) keeps its checkpoint of "
        f"epoch {saved} of 200; finished runs are kept: run the same command again to continue")
    assert f"holds epoch {saved} of 200; continue with" in log.read_text()  # the trainer's stop
