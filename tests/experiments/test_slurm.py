"""The Slurm launcher against a real Slurm (CI starts one with ``tools/slurm_ci.sh start``).

Skipped, with the reason, where there is no ``sbatch`` or no controller answers -- unless
``ONE_FAST_SLURM_REQUIRED=1`` (CI's Slurm stage), where that is an error instead. The runs are the
tiny digits table (ResNet-8, 1-4 epochs) on a one-node cluster of this machine's CPUs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from one_fast.engine.metrics import read_metrics
from one_fast.experiments.__main__ import main
from one_fast.experiments.local_launcher import launch_local
from one_fast.experiments.runner import plan_runs, table_dir, train
from one_fast.experiments.slurm import SlurmError, live_jobs
from one_fast.experiments.slurm_launcher import SlurmOptions, launch_slurm, wait_for_jobs
from one_fast.experiments.status import status_lines

from .digits_table import config, kd_student, tiny_options, tiny_table


def _slurm_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch not found: these tests need Slurm (tools/slurm_ci.sh start)"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return f"no Slurm controller answers sinfo: {out.stderr.strip()[:200]}"
    return None


_NO_SLURM = _slurm_reason()
if _NO_SLURM is not None and os.environ.get("ONE_FAST_SLURM_REQUIRED") == "1":
    pytest.fail(f"ONE_FAST_SLURM_REQUIRED=1 but {_NO_SLURM}", pytrace=False)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_NO_SLURM is not None, reason=str(_NO_SLURM))]
CPU = SlurmOptions(gpus_per_run=0, time_min=10)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # sbatch passes the environment on: one thread per run, as the local launcher gives each
    # of 2 parallel runs on 2 cores, so both launchers compute the same float32 sums.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


def _table_rows(table, options) -> list[str]:
    text = (table_dir(table, options) / "TABLE.md").read_text()
    return [line for line in text.splitlines() if line.startswith("| m")]


def _node_cpus() -> int:
    """CPUs of the cluster's (one) node."""
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True)
    return min(int(n.rstrip("+")) for n in out.stdout.split())


def _job_state(job_id: str) -> str:
    return (live_jobs() or {}).get(job_id, "GONE")


def _start_now(job_id: str) -> None:
    """Slurm holds a requeued batch job back for a while (its begin time); start it now.

    Not in the second of the requeue: the node revoked the job's credential then, and refuses
    ("Job credential revoked", the job ends with exit 1) a new credential whose creation second
    is not later than the revocation's -- the hold Slurm itself gives a requeued job (the
    credential lifetime, 120 s by default) is there to avoid exactly this.
    """
    deadline = time.monotonic() + 120
    while _job_state(job_id) != "PENDING" and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # the revocation happened before the job showed PENDING
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


def _diagnosis(run, table, options) -> str:
    """What a failed wait left behind: the run's state, launch record and logs' last lines."""
    launch = run.run_dir / "launch.json"
    logs = sorted((table_dir(table, options) / "slurm").glob("*/*_log.*"))
    parts = [*status_lines(table, options),
             launch.read_text() if launch.is_file() else "no launch.json"]
    for path in [run.log_path, *logs]:
        if path.is_file():
            parts.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-8:]))
    return "\n".join(parts)


def _resumed_epoch(run) -> int:
    """The epoch the run's one resume continued from, read from its log."""
    found = re.findall(rf"resumed from {re.escape(str(run.run_dir))} after epoch (\d+)",
                       run.log_path.read_text())
    assert len(found) == 1, f"expected one resume in {run.log_path}, found {found}"
    return int(found[0])


def _wait_for_checkpoint(run, epoch: int = 1) -> int:
    meta = run.run_dir / "checkpoint.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            saved = json.loads(meta.read_text())["epoch"]
            if saved >= epoch:
                return saved
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of epoch {epoch} in {run.run_dir}")


def _uninterrupted(run, folder) -> dict:
    """The last metrics record of the run's own command trained start to end elsewhere."""
    command = [*run.command, "--out-dir", str(folder)]  # the later --out-dir wins
    code, _, reason = train(command, folder.with_suffix(".log"))
    assert code == 0, reason
    return read_metrics(folder)[-1]


def _same_training(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    assert a["train"] == b["train"] and a["test_acc"] == b["test_acc"]


def test_array_table_equals_local_table_and_status_follows_it(tmp_path):
    table = tiny_table()
    options = tiny_options(tmp_path / "slurm", seeds=(0, 1))
    ids = launch_slurm(table, options, CPU, say=lambda _: None)
    assert len(ids) == 4 and len({i.split("_")[0] for i in ids.values()}) == 1  # one array
    queued = status_lines(table, options)
    if _node_cpus() < 4:  # 4 one-CPU jobs on fewer CPUs: some wait in the queue
        assert any(line.startswith("queued ") for line in queued), queued
    assert all(line.split()[0] in ("queued", "running", "finished") for line in queued[:4])
    assert wait_for_jobs(ids, table, options, poll_s=1, say=lambda _: None) == 0
    after = status_lines(table, options)
    assert after[-1].startswith("4 runs: 4 finished")
    # A second submission finds everything finished and submits nothing.
    assert launch_slurm(table, options, CPU, say=lambda _: None) == {}

    local = tiny_options(tmp_path / "local", seeds=(0, 1))
    launch_local(table, local, parallel=2, say=lambda _: None)
    assert _table_rows(table, options) == _table_rows(table, local)


# `scontrol requeue`: what an admin, or a preemption in REQUEUE mode, does to a running job
# (SIGTERM, then back to the queue). `scancel --signal=USR2`: the warning Slurm sends before a
# job's time limit (submitit's --signal=USR2@delay), on which submitit calls RunJob.checkpoint
# and requeues the job itself; sent now rather than after minutes of waiting (on a one-minute
# limit Slurm may send it before Python has started: it signals up to 60 s early).
@pytest.mark.parametrize("interrupt", [["scontrol", "requeue"], ["scancel", "--signal=USR2"]],
                         ids=["scontrol-requeue", "time-limit-warning"])
def test_interrupted_job_is_requeued_and_resumes_from_its_checkpoint_exactly(
        tmp_path, interrupt):
    table = tiny_table(config("m2", 2))
    options = tiny_options(tmp_path / "runs", seeds=(0,), epochs=4)
    (job_id,) = launch_slurm(table, options, CPU, say=lambda _: None).values()
    run = plan_runs(table, options)[0]
    saved = _wait_for_checkpoint(run)
    subprocess.run([*interrupt, job_id], check=True)
    _start_now(job_id)
    assert wait_for_jobs({"run": job_id}, table, options, poll_s=1, say=lambda _: None) == 0, \
        _diagnosis(run, table, options)
    launch = json.loads((run.run_dir / "launch.json").read_text())
    assert launch["requeues"] == 1 and launch["status"] == "finished"
    # The signal may land an epoch or two after the checkpoint seen above, never before it.
    resumed = _resumed_epoch(run)
    assert saved <= resumed < 4, f"checkpoint of epoch {saved} seen, resumed after {resumed}"
    _same_training(read_metrics(run.run_dir)[-1], _uninterrupted(run, tmp_path / "straight"))


def test_students_wait_for_their_teachers_job(tmp_path):
    table = tiny_table(config("m2", 2), kd_student("m2"))
    options = tiny_options(tmp_path / "runs", seeds=(0,))
    ids = launch_slurm(table, options, CPU, say=lambda _: None)
    teacher, student = plan_runs(table, options)
    teacher_id, student_id = (ids[str(r.run_dir.relative_to(options.out_dir))]
                              for r in (teacher, student))
    shown = subprocess.run(["scontrol", "show", "job", student_id], capture_output=True,
                           text=True, check=True).stdout
    assert f"Dependency=afterok:{teacher_id}" in shown  # not the runner: Slurm holds it
    assert wait_for_jobs(ids, table, options, poll_s=1, say=lambda _: None) == 0
    assert f"--teacher {teacher.run_dir}" in student.log_path.read_text()
    # The student started (wrote inputs.json) after the teacher's last checkpoint.
    assert (teacher.run_dir / "checkpoint.pt").stat().st_mtime_ns < \
        (student.run_dir / "inputs.json").stat().st_mtime_ns


def test_two_task_job_trains_with_gloo_ddp_under_srun(tmp_path):
    table = tiny_table(config("m2", 2))
    options = tiny_options(tmp_path / "runs", seeds=(0,))
    ddp = SlurmOptions(gpus_per_run=0, tasks_per_run=2, time_min=10)
    ids = launch_slurm(table, options, ddp, say=lambda _: None)
    assert wait_for_jobs(ids, table, options, poll_s=1, say=lambda _: None) == 0
    run = plan_runs(table, options)[0]
    log = run.log_path.read_text()
    assert "$ srun --overlap --ntasks=2" in log and "device cpu, world 2," in log
    assert read_metrics(run.run_dir)[-1]["epoch"] == 1


def test_unknown_partition_is_one_line_from_slurm_and_makes_no_folder(tmp_path, capfd):
    table = tiny_table(config("m2", 2))
    options = tiny_options(tmp_path / "runs", seeds=(0,))
    with pytest.raises(SlurmError, match=r"Slurm refused the submission: sbatch: error: "
                                         r"invalid partition specified: nope"):
        launch_slurm(table, options, SlurmOptions(partition="nope", gpus_per_run=0),
                     say=lambda _: None)
    assert not (tmp_path / "runs").exists()
    assert capfd.readouterr().err == ""  # nothing but the error itself


def test_command_line_submits_without_waiting_and_status_follows(tmp_path, capsys):
    flags = ["branches", "--dataset", "digits", "--only", "digits-resnet32-m1", "--seeds", "0",
             "--epochs", "1", "--out-dir", str(tmp_path), "--launcher", "slurm",
             "--gpus-per-run", "0", "--slurm-time", "10"]
    assert main([*flags, "--dry-run", "--", "--depth", "8"]) == 0
    assert "--num-branches 1 --epochs 1 --seed 0 --amp none" in capsys.readouterr().out
    assert not tmp_path.joinpath("branches").exists()
    assert main([*flags, "--no-wait", "--", "--depth", "8"]) == 0
    out = capsys.readouterr().out
    assert "digits-resnet32-m1 seed 0: Slurm job " in out and "1 jobs submitted" in out
    assert main([*flags, "--status", "--", "--depth", "8"]) == 0
    status = capsys.readouterr().out
    assert status.split()[0] in ("queued", "running") and "# " in status  # the table so far
    job_id = status.split("(Slurm job ")[1].split(")")[0]
    deadline = time.monotonic() + 300
    while _job_state(job_id) != "GONE" and time.monotonic() < deadline:
        time.sleep(1)
    assert main([*flags, "--status", "--", "--depth", "8"]) == 0
    status = capsys.readouterr().out
    assert status.startswith("finished digits-resnet32-m1 seed 0")
    assert "1 runs: 1 finished" in status
    assert "| digits-resnet32-m1 " in status and "| 0 |" in status
