"""The trainer end to end on the CPU: learning, exact resume, compile, DDP, failure handling."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from one_fast import train
from one_fast.cli.train_flags import config_from_args
from one_fast.config import TrainConfig
from one_fast.engine.checkpoint import load_checkpoint
from one_fast.engine.step import NonFiniteLossError
from one_fast.loss import backends
from one_fast.runs import runtime, trainer
from one_fast.runs.resume import ResumeMismatchError

from .full_disk import fill_disk_after

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
    with pytest.raises(ResumeMismatchError, match=r"--depth 8 \(now 14\), --num-branches 3 "
                                                  r"\(now 2\)"):
        train.run(other)


def test_resume_refuses_other_optimisation_settings(tmp_path, capsys):
    """Resuming with another --lr would switch the run's optimisation mid-run: one error line
    naming the flag; the length of the run and where it runs may change."""
    run_dir = tmp_path / "run"
    assert train.main(["--epochs", "1", "--out-dir", str(run_dir), *TINY]) == 0
    saved = (run_dir / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    line = main_error(capsys, "--resume", str(run_dir), "--epochs", "2", "--lr", "0.5",
                      "--kl-weight", "0")
    assert line.startswith(f"error: --resume {run_dir}: that run was trained with --kl-weight 1 "
                           "(now 0), --lr 0.1 (now 0.5)")
    assert "--epochs" in line and "--lr-milestones" in line  # what may change
    assert (run_dir / "checkpoint.pt").read_bytes() == saved
    assert json.loads((run_dir / "run.json").read_text())["config"]["lr"] == 0.1


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    cfg = quick(tmp_path, epochs=1)
    train.run(cfg)
    ckpt = Path(cfg.out_dir) / "checkpoint.pt"
    before = ckpt.read_bytes()

    real = trainer.make_method

    def poisoned(config, backend):
        method = real(config, backend)
        loss = method.loss

        def nan_loss(outputs, y, w):
            return loss((outputs[0] * float("nan"), *outputs[1:]), y, w)
        method.loss = nan_loss
        return method

    monkeypatch.setattr(trainer, "make_method", poisoned)
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
    with pytest.raises(ValueError, match="--batch-size 5000 is larger than the training set"):
        train.run(quick(tmp_path, batch_size=5000))
    with pytest.raises(ValueError, match="--depth 9 does not fit --block basic: .* 6n\\+2"):
        train.run(quick(tmp_path, depth=9))
    with pytest.raises(ValueError, match="--cuda-graphs needs a CUDA device"):
        train.run(quick(tmp_path, cuda_graphs=True))
    with pytest.raises(ValueError, match="--amp must be one of bf16, none"):
        train.run(quick(tmp_path, amp="fp8"))
    with pytest.raises(SystemExit):
        config_from_args(["--lr-milestones", "a,b"])


def test_help_lists_every_field_grouped_with_the_presets_defaults():
    out = subprocess.run([sys.executable, "-m", "one_fast.train", "--dataset", "cifar100",
                          "--help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in vars(TrainConfig()):
        assert "--" + name.replace("_", "-") in out, name
    for title in ("data:", "model:",
                  "method (one, baseline, kd, dml, ensemble, cl_ilr, okddip) and its loss:",
                  "optimisation:", "speed", "output"):
        assert "\n" + title in out, title
    flat = " ".join(out.split())
    assert "(default: 150,225)" in flat and "(default: 300)" in flat  # the cifar100 preset's
    assert "--preset NAME recipe" in flat  # choices listed once, not repeated as a metavar


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


# --------------------------------------------------------------------------------------------
# The command line as a user meets it: run folders, one-line errors, Ctrl-C, the console.

def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m one_fast.train ARGS`` in ``cwd`` (the worktree's one_fast on the path)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "one_fast.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


TINY = ("--batch-size", "512", "--no-progress", "--lr-milestones", "")  # 2 steps per epoch


def epochs_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").open()]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.slow
def test_cli_one_run_per_folder(tmp_path):
    """A second run in a used folder is refused; --resume continues in the folder it resumes
    (even without --out-dir), --overwrite replaces the run."""
    run_dir = tmp_path / "exp"
    first = cli("--epochs", "1", "--out-dir", str(run_dir), *TINY, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    saved = (run_dir / "checkpoint.pt").read_bytes()

    again = cli("--epochs", "1", "--out-dir", str(run_dir), *TINY, cwd=tmp_path)
    line = one_error_line(again)
    assert f"--out-dir {run_dir} already holds a run (checkpoint after epoch 1 of 1)" in line
    assert f"--resume {run_dir}" in line and "--overwrite" in line
    assert (run_dir / "checkpoint.pt").read_bytes() == saved and epochs_logged(run_dir) == [1]

    resumed = cli("--resume", str(run_dir), "--epochs", "2", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_logged(run_dir) == [1, 2]
    assert not (tmp_path / "runs").exists()  # nothing went to the preset's runs/digits
    # The resumed run kept its own settings (batch 512: 2 steps per epoch).
    assert load_checkpoint(run_dir)["step"] == 4

    replaced = cli("--epochs", "1", "--out-dir", str(run_dir), "--overwrite", *TINY,
                   cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert epochs_logged(run_dir) == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # the old run is gone entirely


@pytest.mark.parametrize("args,match", [
    (["--kl-weight", "-5"], "--kl-weight must be >= 0, got -5"),
    (["--lr-decay", "0"], "--lr-decay must be in (0, 1], got 0"),
    (["--momentum", "-1"], "--momentum must be in [0, 1), got -1"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--epochs", "5", "--lr-milestones", "4,9"], "--lr-milestones 4,9 go beyond --epochs 5"),
])
def test_cli_refuses_out_of_range_values(tmp_path, args, match):
    line = one_error_line(cli(*args, cwd=tmp_path))
    assert line.startswith(f"error: {match}")
    assert not (tmp_path / "runs").exists()


def main_error(capsys, *args: str) -> str:
    """Run the CLI entry point in-process; return its one ``error:`` line (exit status 1)."""
    assert train.main(list(args)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_unusable_out_dir_is_one_line(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = main_error(capsys, "--out-dir", str(afile), *TINY)
    assert f"--out-dir {afile} is a file, not a folder" in line
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root: permissions are not enforced, so refuse writes
            import errno
            import tempfile

            def refuse(*args, **kwargs):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

            (locked / "run").mkdir()
            monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
        line = main_error(capsys, "--out-dir", str(locked / "run"), *TINY)
        assert f"--out-dir {locked / 'run'}: cannot write there (Permission denied)" in line
    finally:
        locked.chmod(0o700)


def test_tensorboard_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as if not installed
    line = main_error(capsys, "--tensorboard", "--out-dir", str(tmp_path / "r"), *TINY)
    assert "--tensorboard needs the tensorboard package: pip install tensorboard" in line


def test_download_without_network_is_one_line(tmp_path, capsys, monkeypatch):
    import urllib.error

    from one_fast.data import download

    def offline(url, dest):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(download, "_fetch", offline)
    line = main_error(capsys, "--dataset", "cifar10", "--download", "--data-dir",
                      str(tmp_path / "data"), "--out-dir", str(tmp_path / "r"), *TINY)
    assert "--download" in line and "could not download https://www.cs.toronto.edu" in line
    assert "Temporary failure in name resolution" in line and "check the network" in line
    assert not list((tmp_path / "data").glob("*"))  # no partial archive left behind


def test_full_disk_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """ENOSPC while writing epoch 2's checkpoint: one line, epoch 1's checkpoint intact."""
    run_dir = tmp_path / "run"
    assert train.main(["--epochs", "1", "--out-dir", str(run_dir), *TINY]) == 0
    before = (run_dir / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    fill_disk_after(monkeypatch, 4096, ".checkpoint.pt.")
    assert train.main(["--resume", str(run_dir), "--epochs", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: could not write the checkpoint of epoch 2 to {run_dir} "
                             "(No space left on device)")
    assert f"holds epoch 1 of 2; continue with: python -m one_fast.train --resume {run_dir}" \
        in err[0]
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(run_dir)["epoch"] == 1
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_resuming_nothing_names_the_flag(tmp_path, capsys):
    line = main_error(capsys, "--resume", str(tmp_path / "nope"))
    assert line == f"error: --resume {tmp_path / 'nope'}: no checkpoint at {tmp_path / 'nope'}"


def test_resuming_a_finished_run_says_how_to_extend_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train.main(["--epochs", "1", "--out-dir", str(run_dir), *TINY]) == 0
    capsys.readouterr()
    line = main_error(capsys, "--resume", str(run_dir))
    assert "already finished 1 epochs (--epochs 1); give --epochs N with N > 1" in line


def _sigint(disposition):
    """A preexec_fn giving the child process SIGINT's ``disposition`` whatever the test runner's
    own is (a suite started with ``nohup ... &`` runs with SIGINT ignored)."""
    return lambda: signal.signal(signal.SIGINT, disposition)


@pytest.mark.slow
@pytest.mark.parametrize("started_with", [signal.SIG_DFL, signal.SIG_IGN],
                         ids=["sigint-default", "sigint-ignored"])
def test_ctrl_c_saves_plots_and_says_how_to_resume(tmp_path, started_with):
    """Ctrl-C stops the run cleanly, also when the trainer was started with SIGINT ignored
    (the trainer installs its own handler)."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "one_fast.train", "--epochs", "200", "--out-dir",
         str(run_dir), *TINY], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_sigint(started_with))
    try:
        for line in proc.stdout:  # wait until an epoch has finished (and been checkpointed)
            if line.split()[:2] == ["epoch", "2/200"]:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    saved = load_checkpoint(run_dir)["epoch"]  # epoch 2's save may have been interrupted
    assert saved >= 1
    assert err.strip().splitlines()[-1] == (
        f"interrupted: {run_dir / 'checkpoint.pt'} holds epoch {saved} of 200; continue with: "
        f"python -m one_fast.train --resume {run_dir}")
    assert (run_dir / "curves.png").stat().st_size > 1000  # the plot of what finished
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"


def test_a_run_that_died_before_its_first_checkpoint_reruns_with_the_same_command(
        tmp_path, capsys, monkeypatch):
    """A folder without a checkpoint is not a run yet: the same command starts it again (its
    files replaced), and --resume says that this is what works."""
    run_dir = tmp_path / "run"
    args = ["--epochs", "1", "--out-dir", str(run_dir), *TINY]
    real = trainer.make_method

    def poisoned(config, backend):
        method = real(config, backend)
        loss = method.loss
        method.loss = lambda outputs, y, w: loss((outputs[0] * float("nan"), *outputs[1:]), y, w)
        return method

    monkeypatch.setattr(trainer, "make_method", poisoned)
    assert main_error(capsys, *args).startswith("error: non-finite loss at epoch 1, step 1")
    assert not (run_dir / "checkpoint.pt").exists()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    line = main_error(capsys, "--resume", str(run_dir))
    assert line == (f"error: --resume {run_dir}: no checkpoint at {run_dir / 'checkpoint.pt'}: "
                    "no epoch of that run finished, so there is nothing to continue; start it "
                    "again with the command that started it (without --resume)")
    monkeypatch.setattr(trainer, "make_method", real)
    assert train.main(args) == 0
    assert f"{run_dir} held no checkpoint" in capsys.readouterr().out
    assert epochs_logged(run_dir) == [1]
    provenance = json.loads((run_dir / "run.json").read_text())
    assert [i["status"] for i in provenance["invocations"]] == ["finished"]


def test_resume_into_another_folder_takes_the_history_along(tmp_path, capsys):
    """--resume A --out-dir B: B holds the whole run (metrics and provenance from epoch 1),
    A is left as it was."""
    first, second = tmp_path / "a", tmp_path / "b"
    assert train.main(["--epochs", "1", "--out-dir", str(first), *TINY]) == 0
    saved = (first / "checkpoint.pt").read_bytes()
    assert train.main(["--resume", str(first), "--out-dir", str(second), "--epochs", "2",
                       "--no-progress"]) == 0
    assert epochs_logged(second) == [1, 2] and epochs_logged(first) == [1]
    assert (first / "checkpoint.pt").read_bytes() == saved
    invocations = json.loads((second / "run.json").read_text())["invocations"]
    assert [i.get("resumed_from") for i in invocations] == [None, str(first)]
    assert (second / "curves.png").is_file() and load_checkpoint(second)["epoch"] == 2


def test_console_prints_every_evaluated_epoch(tmp_path, capsys):
    assert train.main(["--epochs", "2", "--out-dir", str(tmp_path / "r"), *TINY]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    for line in lines:
        for part in ("loss ", "CE(ens)", "KL ", "test top-1 b0 ", " b1 ", " b2 ", " ens ",
                     "| lr 0.1", "img/s"):
            assert part in line, (part, line)


def test_progress_bar_reads_the_loss_from_the_first_step():
    reads = [s for s in range(1, 80) if trainer._read_loss_after(s)]
    assert reads == [1, 2, 4, 8, 16, 25, 50, 75]


def test_fused_names_the_flags_when_it_cannot_run(monkeypatch):
    cpu = runtime.distributed.DistInfo(0, 1, torch.device("cpu"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    wide = dataclasses.replace(config_from_args([]), fused=True, num_branches=9)
    rt = train.resolve_runtime(wide, cpu)
    if "native" in runtime.available_backends("cpu"):
        assert rt.loss_backend == "reference"
        assert "the native kernel takes at most 8 branches, --num-branches is 9" in rt.note
    hot = dataclasses.replace(config_from_args([]), fused=True, temperature=1000.0)
    assert train.resolve_runtime(hot, cpu).loss_backend == "reference"
    # Not built (e.g. pip's build isolation hid torch from setup.py): say why and how.
    not_built = backends._native_load_reason(ModuleNotFoundError("one_fast._native"))
    monkeypatch.setattr(backends, "_NATIVE_LOAD_REASON", not_built)
    monkeypatch.setattr(runtime, "available_backends", lambda device: ["reference"])
    note = train.resolve_runtime(dataclasses.replace(wide, num_branches=3), cpu).note
    assert "was not built" in note and "pip install --no-build-isolation -e ." in note
