"""Launchers without a cluster: GPU/CPU slots of --parallel, run locks, the srun rendezvous,
the Slurm options and errors, --status, and a run executed by submitit's local executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from one_fast.engine.metrics import read_metrics
from one_fast.experiments.__main__ import main
from one_fast.experiments.jobs import JobResult, RunJob, distributed_command
from one_fast.experiments.local_launcher import launch_local, local_slots
from one_fast.experiments.locks import Holder, RunLock, RunLocked, lock_path, read_holder
from one_fast.experiments.runner import plan_runs, run_table, table_dir
from one_fast.experiments.slurm import (
    SlurmError,
    parse_time,
    require_sbatch,
    require_submitit,
    slurm_message,
)
from one_fast.experiments.slurm_launcher import SlurmOptions
from one_fast.experiments.status import launch_failure, status_lines, write_launch

from .digits_table import config, kd_student, tiny_options, tiny_table


def test_local_slots_pin_gpus_or_share_cpu_threads():
    assert local_slots(2, 1, 4, 8) == [{"CUDA_VISIBLE_DEVICES": "0"},
                                       {"CUDA_VISIBLE_DEVICES": "1"}]
    assert local_slots(2, 2, 4, 8) == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                       {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert local_slots(3, 1, 0, 8) == [{"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}] * 3
    assert local_slots(4, 1, 0, 2)[0]["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match=r"needs 4 GPUs; this machine has 3"):
        local_slots(2, 2, 3, 8)
    with pytest.raises(ValueError, match=r"needs 2 GPUs; this machine has 0"):
        local_slots(1, 2, 0, 8)
    with pytest.raises(ValueError, match="--parallel must be >= 1"):
        local_slots(0, 1, 0, 8)


def test_local_launcher_starts_a_student_only_after_its_teacher(tmp_path, monkeypatch):
    import one_fast.experiments.local_launcher as local_launcher

    events: list[str] = []

    def fake_execute(job):  # the order of starts and ends, without training
        events.append(f"start {job.config}")
        time.sleep(0.3 if job.config == "teacher" else 0.05)
        events.append(f"end {job.config}")
        return JobResult("finished")

    monkeypatch.setattr(local_launcher, "_execute", fake_execute)
    monkeypatch.setattr(local_launcher, "rewrite_table", lambda table, options: None)
    table = tiny_table(config("teacher", 2), kd_student("teacher"), config("other", 3))
    results = launch_local(table, tiny_options(tmp_path, seeds=(0,)), parallel=2,
                           say=lambda _: None)
    assert set(results) == {("teacher", 0), ("student", 0), ("other", 0)}
    # Two slots: the teacher and the independent run start at once; the student, though its
    # slot came free first, waits for its teacher's end.
    assert events[:2] == ["start teacher", "start other"]
    assert events.index("start student") > events.index("end teacher")


def test_cli_refuses_more_gpus_than_the_machine_has(tmp_path, capsys):
    code = main(["main", "--dataset", "digits", "--parallel", "2", "--gpus-per-run", "2",
                 "--out-dir", str(tmp_path)])
    assert code == 1
    assert "--parallel 2 x --gpus-per-run 2 needs 4 GPUs; this machine has 0" in \
        capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_lock_names_a_live_holder_and_takes_over_stale_ones(tmp_path):
    run_dir = tmp_path / "seed0"
    with RunLock(run_dir):
        holder = read_holder(run_dir)
        assert holder is not None and holder.pid == os.getpid()
        # A second runner in another process sees the live holder and does not train.
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from one_fast.experiments.locks import *;"
             f"RunLock(__import__('pathlib').Path({str(run_dir)!r})).acquire()"],
            capture_output=True, text=True, env={**os.environ, "SLURM_JOB_ID": ""})
        assert other.returncode == 1
        assert f"is being trained by pid {os.getpid()}" in other.stderr
    assert not lock_path(run_dir).exists()

    def write(holder: Holder) -> None:
        lock_path(run_dir).write_text(json.dumps(holder.__dict__))

    write(Holder(os.uname().nodename, _dead_pid()))  # a runner that died: stale
    with RunLock(run_dir):
        assert read_holder(run_dir).pid == os.getpid()
    write(Holder("elsewhere", 1, "77_1"))  # a Slurm job still in the queue: live
    with pytest.raises(RunLocked, match=r"Slurm job 77_1 \(pid 1 on elsewhere\)"):
        RunLock(run_dir, live_jobs=lambda: {"77_1"}).acquire()
    with RunLock(run_dir, live_jobs=lambda: set()):  # the job is gone: stale
        assert read_holder(run_dir).pid == os.getpid()


def test_distributed_command_wraps_the_ordinary_trainer_command():
    command = [sys.executable, "-m", "one_fast.train", "--seed", "0"]
    assert distributed_command(command, 1, "slurm") == command
    assert distributed_command(command, 2, "slurm") == [
        "srun", "--overlap", "--ntasks=2", "--kill-on-bad-exit=1", *command]
    assert distributed_command(command, 2, "local") == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "one_fast.train", "--seed", "0"]


def test_slurm_time_and_message_parsing():
    assert [parse_time(t) for t in ("90", "1:30:00", "10:30", "2-00", "1-02:03:04")] == \
        [90, 90, 11, 2880, 1564]  # seconds round up
    for bad in ("abc", "0", "1:2:3:4"):
        with pytest.raises(ValueError, match="--slurm-time"):
            parse_time(bad)
    err = RuntimeError("sbatch: error: invalid partition specified: nope\nsbatch: error: "
                       "Batch job submission failed: Invalid partition name specified\n")
    assert slurm_message(err) == ("sbatch: error: invalid partition specified: nope; Batch job "
                                  "submission failed: Invalid partition name specified")
    assert slurm_message(RuntimeError("\nsomething else\n")) == "something else"


def test_slurm_options_become_submitit_parameters():
    pytest.importorskip("submitit")
    params = SlurmOptions(partition="gpu", time_min=90, gpus_per_run=2, cpus_per_task=8,
                          mem="64G", account="lab", qos="high", setup=("module load cuda",),
                          extra=(("constraint", "a100"), ("reservation", "r1"),
                                 ("signal_delay_s", "300"))).executor_parameters()
    assert params["partition"] == "gpu" and params["time"] == 90
    assert params["ntasks_per_node"] == 2 and params["gpus_per_task"] == 1
    assert params["cpus_per_task"] == 8 and params["mem"] == "64G"
    assert params["account"] == "lab" and params["qos"] == "high"
    assert params["setup"] == ["module load cuda"] and params["constraint"] == "a100"
    assert params["signal_delay_s"] == 300
    assert params["srun_args"] == ["--ntasks=1", "--overlap"]
    assert params["additional_parameters"] == {"kill-on-invalid-dep": "yes", "reservation": "r1"}
    cpu = SlurmOptions(gpus_per_run=0, tasks_per_run=2).executor_parameters()
    assert "gpus_per_task" not in cpu and cpu["ntasks_per_node"] == 2
    with pytest.raises(ValueError, match="--tasks-per-run 3 must equal --gpus-per-run 2"):
        SlurmOptions(gpus_per_run=2, tasks_per_run=3)
    with pytest.raises(ValueError, match="max_num_timeout must be a count, got 'x'"):
        SlurmOptions(extra=(("max_num_timeout", "x"),))
    with pytest.raises(ValueError, match="--slurm-time 2 min is too short"):
        SlurmOptions(time_min=2, signal_delay_s=90)
    with pytest.raises(ValueError, match=r"comes 200 s \(up to 260 s\)"):
        SlurmOptions(time_min=4, extra=(("signal_delay_s", "200"),))


def test_missing_submitit_or_sbatch_say_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(SlurmError, match=r"pip install 'one_fast\[cluster\]'"):
        require_submitit()
    monkeypatch.delitem(sys.modules, "submitit")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match="Slurm was not found"):
        require_sbatch()
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    assert main(["main", "--dataset", "digits", "--launcher", "slurm",
                 "--out-dir", str(out)]) == 1
    assert "Slurm was not found (no sbatch on PATH)" in capsys.readouterr().err
    assert not out.exists()


def test_a_launcher_failure_counts_until_the_run_trains_again(tmp_path):
    """launch.json's "failed" names the last launcher attempt; once anything trained in the
    folder after it (run.json rewritten: a resume by hand or by the sequential runner), the
    folder's own state is what counts."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_launch(run_dir, {"status": "failed", "error": "exit code 1: boom",
                           "updated": time.time() - 60})
    assert launch_failure(run_dir) == "exit code 1: boom"
    (run_dir / "run.json").write_text("{}")  # written after the failed attempt
    assert launch_failure(run_dir) is None
    write_launch(run_dir, {"status": "failed", "error": "again", "updated": time.time() + 60})
    assert launch_failure(run_dir) == "again"


def test_status_reads_every_state_from_the_folders(tmp_path):
    table = tiny_table(config("m2", 2))
    options = tiny_options(tmp_path, seeds=(0, 1, 2, 3))
    runs = plan_runs(table, options)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(runs[1].run_dir).parent.mkdir(parents=True)
        lock_path(runs[1].run_dir).write_text(json.dumps(
            {"host": os.uname().nodename, "pid": sleeper.pid, "job_id": ""}))
        runs[2].run_dir.mkdir()
        write_launch(runs[2].run_dir, {"status": "failed", "error": "exit code 1: boom"})
        runs[3].run_dir.mkdir()
        (runs[3].run_dir / "metrics.jsonl").write_text("")  # started, no epoch saved
        lines = status_lines(table, options)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert lines[0].startswith("missing  m2 seed 0")
    assert lines[1].startswith("running  m2 seed 1") and f"pid {sleeper.pid}" in lines[1]
    assert lines[2].startswith("failed   m2 seed 2") and "boom" in lines[2]
    assert lines[3].startswith("partial  m2 seed 3") and "resumes it" in lines[3]
    assert lines[4].startswith("4 runs: 1 running, 1 partial, 1 failed, 1 missing")


def test_sequential_runner_skips_a_run_another_process_is_training(tmp_path):
    table = tiny_table(config("m2", 2))
    options = tiny_options(tmp_path, seeds=(0,))
    run = plan_runs(table, options)[0]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(run.run_dir).parent.mkdir(parents=True)
        lock_path(run.run_dir).write_text(json.dumps(
            {"host": os.uname().nodename, "pid": sleeper.pid, "job_id": ""}))
        lines: list[str] = []
        result = run_table(table, options, say=lines.append)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.trained == 0 and not run.run_dir.exists()
    assert lines == [f"[1/1] m2 seed 0: skipped: {run.run_dir} is being trained by pid "
                     f"{sleeper.pid} on {os.uname().nodename}"]


@pytest.mark.parametrize("code, why", [(130, "Ctrl-C"), (-15, "signal 15"), (1, None)])
def test_a_stopped_run_is_interrupted_and_a_broken_one_failed(tmp_path, monkeypatch, code, why):
    import one_fast.experiments.jobs as jobs

    table = tiny_table(config("m2", 2))
    options = tiny_options(tmp_path, seeds=(0,))
    run = plan_runs(table, options)[0]

    def stopped_trainer(command, log_path, extra_env):
        run.run_dir.mkdir(parents=True)
        return code, 1.0, f"exit code {code}: boom"

    monkeypatch.setattr(jobs, "train", stopped_trainer)
    with pytest.raises(RuntimeError, match="m2 seed 0: "):
        RunJob(table, options, "m2", 0)()
    launch = json.loads((run.run_dir / "launch.json").read_text())
    if why is None:
        assert launch["status"] == "failed" and launch["error"] == "exit code 1: boom"
        assert "## Failed runs" in (table_dir(table, options) / "TABLE.md").read_text()
    else:
        assert launch["status"] == "interrupted" and f"stopped by {why}" in launch["error"]
        assert "## Failed runs" not in (table_dir(table, options) / "TABLE.md").read_text()


@pytest.mark.slow
def test_submitit_local_executor_runs_a_job_and_a_second_runner_trains_nothing(
        tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    table = tiny_table(config("m2", 2))
    options = tiny_options(tmp_path / "runs", seeds=(0,))
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(RunJob(table, options, "m2", 0))
    assert job.result().status == "finished"
    run = plan_runs(table, options)[0]
    launch = json.loads((run.run_dir / "launch.json").read_text())
    assert launch["status"] == "finished" and launch["requeues"] == 0
    assert launch["command"].startswith("python -m one_fast.train --dataset digits")
    record = read_metrics(run.run_dir)[-1]
    table_md = (table_dir(table, options) / "TABLE.md").read_text()
    error = 100 * (1 - record["test_acc"]["branch_0"])
    assert f"| m2 ({run.config.label}) | ONE | fp32 | {error:.2f} |" in table_md
    # Finished: a second job trains nothing and leaves the checkpoint alone.
    stamp = (run.run_dir / "checkpoint.pt").stat().st_mtime_ns
    assert RunJob(table, options, "m2", 0)().detail == "finished earlier"
    assert (run.run_dir / "checkpoint.pt").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_local_parallel_trains_two_runs_at_once(tmp_path, monkeypatch):
    table = tiny_table()
    options = tiny_options(tmp_path, seeds=(0,))
    lines: list[str] = []
    results = launch_local(table, options, parallel=2, say=lines.append)
    assert {r.status for r in results.values()} == {"finished"}
    # Both started before either ended, each with one of the 2 cores.
    assert [ln.split(":")[1].strip()[:7] for ln in lines[:2]] == ["started", "started"]
    assert all("OMP_NUM_THREADS=1" in ln for ln in lines[:2])
    table_md = (table_dir(table, options) / "TABLE.md").read_text()
    for run in plan_runs(table, options):
        error = 100 * (1 - read_metrics(run.run_dir)[-1]["test_acc"]["branch_0"])
        assert f"| {run.config.name} ({run.config.label}) | ONE | fp32 | {error:.2f} |" \
            in table_md
