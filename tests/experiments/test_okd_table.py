"""The okd table: winycg/MCL-OKD's comparison as runs of the trainer, its figures beside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from one_fast.cli.train_flags import parse_flags
from one_fast.config import config_from_flags
from one_fast.experiments.__main__ import main
from one_fast.experiments.runner import RunnerOptions, plan_runs
from one_fast.experiments.tables import OKD_CIFAR100, build_table


def test_dry_run_lists_thirty_runs(tmp_path, capsys):
    assert main(["okd", "--dry-run", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 30 and out[-1].startswith("[30/30] cifar100-resnet110b-okddip seed 2: ")
    assert not any(tmp_path.iterdir())


def test_every_run_is_a_valid_trainer_command_on_the_okd_protocol(tmp_path):
    table = build_table("okd")
    runs = plan_runs(table, RunnerOptions(out_dir=tmp_path, seeds=(0,)))
    methods = []
    for run in runs:
        flags = run.command[run.command.index("one_fast.train") + 1:]
        config = config_from_flags(parse_flags(flags))[0]  # no flag refused
        assert (config.lr_schedule, config.nesterov, config.weight_decay) == ("cosine", True,
                                                                              5e-4)
        assert config.num_branches == (1 if config.method == "baseline" else 4)
        methods.append((run.config.backbone, config.method, config.depth, config.block))
    assert methods == [(b, m, d, k) for b, d, k in (("resnet32", 32, "basic"),
                                                    ("resnet110b", 110, "bottleneck"))
                       for m in ("baseline", "dml", "cl_ilr", "one", "okddip")]


def test_figures_sit_where_mcl_okd_has_them():
    table = build_table("okd")
    shown = {(c.backbone, c.method, r.output): r.paper for c in table.configurations
             for r in c.rows}
    assert shown == OKD_CIFAR100
    assert shown[("resnet110b", "cl_ilr", "ensemble")] == 18.66
    okddip = next(c for c in table.configurations if c.method == "okddip")
    assert okddip.rows[0].metric == "branch_3"  # the leader is OKDDip's student
    assert build_table("okd", ["digits"]).configurations[0].rows[0].paper is None
    notes = " ".join(table.notes)
    assert "best_acc" in notes and "last epoch" in notes and "24.52" in notes


@pytest.mark.slow
def test_runs_end_to_end_on_digits(tmp_path, capsys):
    """The whole table for one epoch, every network shrunk to a bottleneck ResNet-11 (later
    flags win) so ten runs fit a CPU test; TABLE.md reads OKDDip's leader for its student."""
    code = main(["okd", "--dataset", "digits", "--epochs", "1", "--seeds", "0", "--out-dir",
                 str(tmp_path), "--", "--depth", "11", "--block", "bottleneck",
                 "--batch-size", "512"])
    assert code == 0, capsys.readouterr().err
    text = (tmp_path / "okd" / "TABLE.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| digits-")]
    assert len(rows) == 18 and all("| 0 |" in row for row in rows)
    run = Path(tmp_path / "okd" / "digits-resnet32-okddip" / "fp32-e1" / "seed0")
    acc = [json.loads(line) for line in (run / "metrics.jsonl").open()][-1]["test_acc"]
    leader = next(row for row in rows if "resnet32-okddip" in row and "| OKDDip |" in row)
    assert f"| {100 * (1 - acc['branch_3']):.2f} |" in leader
