"""``python -m one_fast.analyze`` on a small trained digits run (CPU)."""

from __future__ import annotations

import json

import pytest

from one_fast import analyze, train
from one_fast.engine.metrics import read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("analyze") / "run"
    assert train.main(["--depth", "8", "--epochs", "1", "--batch-size", "128",
                       "--num-branches", "3", "--out-dir", str(folder), "--no-progress",
                       "--amp", "none"]) == 0
    return folder


@pytest.mark.slow
def test_both_analyses_written_and_zero_noise_reproduces_the_runs_error(run_dir, capsys):
    assert analyze.main([str(run_dir), "--sigmas", "0", "0.05", "--draws", "2"]) == 0
    out = run_dir / "analysis"
    for name in ("perturbation.png", "agreement.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    perturbation = json.loads((out / "perturbation.json").read_text())
    logged = read_metrics(run_dir)[-1]["test_acc"]
    zero, noisy = perturbation["results"]
    assert zero["sigma"] == 0.0 and zero["student_error_percent"]["draws"] == [
        100.0 * (1.0 - logged["branch_0"])]  # exactly the trainer's own number
    assert zero["ensemble_error_percent"]["mean"] == 100.0 * (1.0 - logged["ensemble"])
    assert perturbation["run_test_error_percent"] == zero["student_error_percent"]["mean"]
    assert len(noisy["student_error_percent"]["draws"]) == 2
    assert "rms(W)" in perturbation["noise"]
    agreement = json.loads((out / "agreement.json").read_text())
    assert agreement["members"] == 3 and len(agreement["disagreement"]) == 3
    assert agreement["member_error_percent"][0] == 100.0 * (1.0 - logged["branch_0"])
    out = capsys.readouterr().out
    assert "student error" in out
    assert out.startswith(f"{run_dir}: trained by commit ")  # the run's provenance


def test_missing_run_folder_is_one_error_line(tmp_path, capsys):
    assert analyze.main([str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.startswith(f"error: no run folder at {tmp_path / 'nope'}")
