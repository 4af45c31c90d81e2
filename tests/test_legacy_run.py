"""A run folder written by an earlier version (tests/fixtures/legacy_run_digits_r8_m3, commit
024fef5) still evaluates to its own last record, exports its student and resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from one_fast import evaluate as evaluate_command
from one_fast import export as export_command
from one_fast import train as train_command

LEGACY = Path(__file__).parent / "fixtures" / "legacy_run_digits_r8_m3"


@pytest.fixture
def legacy_run(tmp_path):
    """A private copy of the committed run folder (the tests write into it)."""
    return Path(shutil.copytree(LEGACY, tmp_path / "legacy"))


def _last_test_acc(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "test_acc" in r][-1]["test_acc"]


def test_legacy_run_evaluates_to_its_own_record(legacy_run, capsys):
    assert evaluate_command.main([str(legacy_run), "--json"]) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["epoch"] == 2 and result["matches_recorded"] is True
    assert result["accuracy"] == _last_test_acc(legacy_run)


def test_legacy_run_exports_its_student(legacy_run, tmp_path, capsys):
    out = tmp_path / "student.pt2"
    assert export_command.main([str(legacy_run), "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.is_file() and "parameters" in capsys.readouterr().out


def test_legacy_run_resumes(legacy_run, capsys):
    assert train_command.main(["--resume", str(legacy_run), "--epochs", "3",
                               "--no-progress"]) == 0, capsys.readouterr().err
    assert "resumed from" in capsys.readouterr().out
    epochs = [json.loads(line)["epoch"]
              for line in (legacy_run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_the_old_load_run_path_still_works():
    """``one_fast.engine.runs`` (where load_run lived before the layering) is a deprecated
    alias of :mod:`one_fast.runs.loading`."""
    import importlib
    import sys

    sys.modules.pop("one_fast.engine.runs", None)
    with pytest.warns(DeprecationWarning, match="import load_run from one_fast.runs"):
        old = importlib.import_module("one_fast.engine.runs")
    from one_fast.runs import load_run

    assert old.load_run is load_run
    assert old.load_run(LEGACY).epoch == 2
