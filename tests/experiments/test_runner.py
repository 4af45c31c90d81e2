"""The runner end to end on digits (CPU), as one scenario so CI starts few trainer processes:

a run killed mid-way resumes from its checkpoint, a failing configuration is reported while the
others finish, TABLE.md shows mean ± std over two seeds, and a second invocation trains nothing.
"""

from __future__ import annotations

import json
import re
import signal
import statistics
import subprocess
import time

import pytest

from one_fast.engine.metrics import read_metrics
from one_fast.experiments.report import write_table
from one_fast.experiments.runner import (
    _trainer_env,
    command_for,
    plan_runs,
    run_state,
    run_table,
    table_dir,
)
from one_fast.runs.provenance import code_label, code_version

from .digits_table import config, tiny_options, tiny_table


def _run(table, options):
    path = table_dir(table, options) / "TABLE.md"
    lines: list[str] = []
    result = run_table(table, options, on_update=lambda r: write_table(r, options, path),
                       say=lines.append)
    write_table(result, options, path)
    return result, path.read_text(), lines


def _kill_after_first_checkpoint(run) -> int:
    """Start the run's own command, SIGKILL it once epoch 1 is saved; the epoch saved."""
    run.run_dir.mkdir(parents=True)
    proc = subprocess.Popen(run.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_trainer_env())
    meta = run.run_dir / "checkpoint.json"
    deadline = time.monotonic() + 300
    while not meta.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads(meta.read_text())["epoch"]


@pytest.mark.slow
def test_runner_resumes_survives_a_failure_reports_and_skips_finished(tmp_path, monkeypatch):
    # One thread per trainer: on 2 shared cores, torch's default threads oversubscribe and a
    # digits epoch measured 10x slower (99 vs 771 images/s).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    table = tiny_table(config("broken", 0), config("m2", 2), config("m3", 3))
    options = tiny_options(tmp_path, seeds=(0, 1), epochs=2)
    runs = plan_runs(table, options)
    killed = next(r for r in runs if r.config.name == "m2" and r.seed == 0)
    saved = _kill_after_first_checkpoint(killed)
    assert saved < 2, "the run finished before it could be killed"
    state = run_state(killed)
    assert (state.state, state.epoch) == ("partial", saved)
    assert command_for(killed, state)[-2:] == ["--resume", str(killed.run_dir)]

    # Seed 0 of "broken" (fails) and "m2" (resumes): the failure does not stop the next run.
    first, text, lines = _run(table.only(["broken", "m2"]), tiny_options(tmp_path, (0,), 2))
    broken, resumed = (first.outcome(r) for r in first.runs)
    assert broken.status == "failed" and "--num-branches" in broken.error
    assert resumed.status == "finished" and first.trained == 2
    assert "## Failed runs" in text and "broken seed 0: exit code 1" in text
    assert re.search(r"\| broken \(.*\) \| ONE \| fp32 \|  \| 1.00 \|  \| 0 \|", text)
    assert any("resuming" in line for line in lines) and any("ETA" in line for line in lines)
    # The killed run continued from its checkpoint instead of starting over.
    assert f"resumed from {killed.run_dir} after epoch {saved}" in killed.log_path.read_text()
    epochs = [r["epoch"] for r in read_metrics(killed.run_dir)]
    assert epochs[0] == 1 and epochs.count(1) == 1 and epochs[-1] == 2

    # Both seeds of the working configurations: the finished run is skipped, three train.
    good = table.only(["m2", "m3"])
    result, text, lines = _run(good, options)
    assert lines[0].startswith("[1/4] m2 seed 0: finished earlier, skipped")
    assert result.trained == 3
    assert all(o.status == "finished" for o in result.outcomes.values())
    for name, row_label, key in (("m2", "ONE", "branch_0"), ("m3", "ONE-E", "ensemble")):
        errors = [100 * (1 - read_metrics(r.run_dir)[-1]["test_acc"][key])
                  for r in result.runs if r.config.name == name]
        want = f"{statistics.mean(errors):.2f} ± {statistics.stdev(errors):.2f}"
        row = next(line for line in text.splitlines()
                   if line.startswith(f"| {name} ") and f"| {row_label} |" in line)
        assert f"| {want} |" in row and "| 0 1 |  |  |" in row
        assert row.endswith(f"| {code_label(code_version())} |")  # the runs' commit
    assert re.search(r"commit [0-9a-f]{7,}", text)

    # Again: nothing trains, checkpoints stay untouched, the same table.
    stamps = {r.run_dir: (r.run_dir / "checkpoint.pt").stat().st_mtime_ns for r in result.runs}
    again, text2, lines2 = _run(good, options)
    assert again.trained == 0
    assert len(lines2) == 4 and all("skipped" in line for line in lines2)
    assert {d: (d / "checkpoint.pt").stat().st_mtime_ns for d in stamps} == stamps
    assert [ln for ln in text2.splitlines() if ln.startswith("| m")] == \
        [ln for ln in text.splitlines() if ln.startswith("| m")]
