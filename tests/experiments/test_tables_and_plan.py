"""Tables, plans, run states and TABLE.md without training (fast)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from one_fast.config import config_to_dict
from one_fast.experiments.__main__ import main
from one_fast.experiments.report import mean_std, render
from one_fast.experiments.runner import (
    FINISHED,
    Outcome,
    RunnerOptions,
    TableResult,
    command_for,
    interrupted_message,
    plan_runs,
    run_state,
    run_table,
)
from one_fast.experiments.tables import TABLES, build_table
from one_fast.runs.provenance import finish_provenance, start_provenance
from one_fast.runs.status import FAILED, MISSING, PARTIAL, STALE

from .digits_table import config, tiny_options, tiny_table


def _fake_run(run, epochs_done, test_acc=True, config=None, provenance=True):
    """Write the files a run of ``config`` (default: the plan's) leaves after ``epochs_done``
    epochs: a checkpoint holding its epoch and config (no weights), run.json and metrics."""
    config = config or run.planned
    run.run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epochs_done, "config": config_to_dict(config)},
               run.run_dir / "checkpoint.pt")
    if provenance:
        start_provenance(run.run_dir, config, from_epoch=0, world_size=1, devices=["cpu"])
    records = [{"epoch": e, "test_acc": {"branch_0": 0.9, "branch_1": 0.8, "ensemble": 0.95}}
               for e in range(1, epochs_done + 1)]
    if not test_acc:
        records[-1].pop("test_acc")
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_every_table_builds_with_unique_names_and_teachers_first():
    for name in TABLES:
        table = build_table(name)
        names = [c.name for c in table.configurations]
        assert len(names) == len(set(names)), name
        for i, c in enumerate(table.configurations):
            if c.teacher is not None:
                assert c.teacher in names[:i]


def test_paper_figures_sit_where_the_paper_has_them():
    rows = {(c.name, r.label): r.paper for c in build_table("branches").configurations
            for r in c.rows}
    assert rows[("cifar100-resnet32-m1", "ONE (m = 1: baseline)")] == 31.18
    assert rows[("cifar100-resnet32-m3", "ONE (m = 3)")] == 26.68
    assert rows[("cifar100-resnet32-m5", "ONE-E (m = 5)")] == 24.65
    main_rows = {(c.name, r.label): r.paper for c in build_table("main").configurations
                 for r in c.rows}
    assert main_rows[("cifar100-resnet110-baseline", "baseline")] == 25.33
    assert main_rows[("cifar100-resnet110-one", "ONE-E")] is None  # not carried: empty
    assert main_rows[("cifar10-resnet32-one", "ONE")] is None
    ablation = {c.name: c.rows[0].paper for c in build_table("ablation").configurations}
    assert ablation == {"cifar100-resnet110-full": 21.62, "cifar100-resnet110-no_distill": 24.73,
                        "cifar100-resnet110-no_sharing": None, "cifar100-resnet110-no_gate": None}
    # Another dataset than the paper's: no figure applies.
    assert all(r.paper is None for c in build_table("branches", ["digits"]).configurations
               for r in c.rows)


def test_commands_carry_method_sharing_teacher_precision_and_extra_flags(tmp_path):
    options = RunnerOptions(out_dir=tmp_path, seeds=(3,), epochs=5, data_dir="d",
                            precision="bf16", extra_flags=("--fused",))
    runs = {r.config.name: r for r in plan_runs(build_table("compare"), options)}
    kd = runs["cifar100-resnet32-kd"].command
    teacher = runs["cifar100-resnet110-baseline"]
    assert kd[kd.index("--teacher") + 1] == str(teacher.run_dir)
    assert kd[kd.index("--method") + 1] == "kd" and kd[-1] == "--fused"
    assert kd[kd.index("--teacher-output") + 1] == "0"  # a baseline teacher has no ensemble
    assert kd[kd.index("--amp") + 1] == "bf16" and kd[kd.index("--seed") + 1] == "3"
    assert teacher.run_dir == tmp_path / "compare/cifar100-resnet110-baseline/bf16-e5/seed3"
    dml = runs["cifar100-resnet32-dml"].command
    assert {"--no-gate", "--no-share-stem"} <= set(dml)
    assert dml[dml.index("--shared-stages") + 1] == "0"
    one = runs["cifar100-resnet110-one"].command
    assert "--method" not in one and one[one.index("--depth") + 1] == "164"
    assert one[one.index("--block") + 1] == "bottleneck"
    ablation = {r.config.name: r.command for r in plan_runs(build_table("ablation"), options)}
    assert "--kl-weight" in ablation["cifar100-resnet110-no_distill"]
    m1 = plan_runs(build_table("branches"), options)[0].command
    assert m1[m1.index("--method") + 1] == "baseline" and m1[m1.index("--num-branches") + 1] == "1"


def test_only_keeps_the_teacher_and_rejects_unknown_names():
    table = build_table("compare").only(["cifar100-resnet32-kd"])
    assert [c.name for c in table.configurations] == ["cifar100-resnet110-baseline",
                                                      "cifar100-resnet32-kd"]
    with pytest.raises(ValueError, match="--only: nope not in table 'compare'"):
        build_table("compare").only(["nope"])


def test_run_states_from_the_files_a_run_leaves(tmp_path):
    (run,) = plan_runs(tiny_table(config("a", 2)), tiny_options(tmp_path, seeds=(0,), epochs=3))
    assert run_state(run).state == MISSING and command_for(run, run_state(run)) == run.command
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "metrics.jsonl").write_text("")  # died before its first checkpoint
    state = run_state(run)
    assert (state.state, state.epoch) == (PARTIAL, 0)
    assert command_for(run, state) == run.command  # the trainer replaces such a folder itself
    _fake_run(run, 2)
    state = run_state(run)
    assert (state.state, state.epoch) == (PARTIAL, 2)
    assert command_for(run, state)[-2:] == ["--resume", str(run.run_dir)]
    _fake_run(run, 3, test_acc=False)
    state = run_state(run)
    assert state.state == FAILED and not state.readable and "metrics.jsonl" in state.detail
    assert command_for(run, state) is None
    assert command_for(run, state, rerun_stale=True)[-1] == "--overwrite"
    _fake_run(run, 3)
    state = run_state(run)
    assert state.state == FINISHED and state.record["epoch"] == 3
    assert command_for(run, state) is None


def test_a_run_of_other_settings_is_stale_never_finished(tmp_path):
    """The reproduction: a run trained with `-- --lr 0.01` in place, a plan with `-- --lr 0.5
    --kl-weight 0`: stale, naming the flags, held unless --rerun-stale."""
    options = tiny_options(tmp_path, seeds=(0,), epochs=3)
    table = tiny_table(config("a", 2))
    (old,) = plan_runs(table, dataclasses.replace(
        options, extra_flags=(*options.extra_flags, "--lr", "0.01")))
    (run,) = plan_runs(table, dataclasses.replace(
        options, extra_flags=(*options.extra_flags, "--lr", "0.5", "--kl-weight", "0")))
    assert old.run_dir == run.run_dir  # the folder is keyed by table, config, precision, seed
    _fake_run(run, 3, config=old.planned)
    state = run_state(run)
    assert state.state == STALE
    assert state.detail == "trained with --kl-weight 1 (plan 0), --lr 0.01 (plan 0.5)"
    assert command_for(run, state) is None
    assert command_for(run, state, rerun_stale=True) == [*run.command, "--overwrite"]
    # Only where and how it ran may differ: another --out-dir or --no-progress is the same run.
    _fake_run(run, 3, config=dataclasses.replace(run.planned, progress=True, out_dir="x"))
    assert run_state(run).state == FINISHED


def test_the_runner_reports_stale_runs_and_trains_nothing(tmp_path):
    options = tiny_options(tmp_path, seeds=(0,), epochs=3)
    table = tiny_table(config("a", 2))
    (run,) = plan_runs(table, options)
    _fake_run(run, 3, config=dataclasses.replace(run.planned, lr=0.01))
    lines = []
    result = run_table(table, options, say=lines.append)
    assert lines == [f"[1/1] a seed 0: stale: trained with --lr 0.01 (plan 0.1); --rerun-stale "
                     f"replaces it ({run.run_dir})"]
    assert result.trained == 0 and result.outcome(run).status == STALE
    assert "## Stale runs" in render(result, options)
    assert main(["branches", "--dataset", "digits", "--only", "digits-resnet32-m1", "--seeds",
                 "0", "--epochs", "3", "--precision", "none", "--out-dir", str(tmp_path),
                 "--rerun-stale", "--dry-run"]) == 0  # the flag exists


def test_provenance_decides_whether_a_run_counts(tmp_path):
    (run,) = plan_runs(tiny_table(config("a", 2)), tiny_options(tmp_path, seeds=(0,), epochs=3))
    _fake_run(run, 3, provenance=False)  # trained before run.json existed
    state = run_state(run)
    assert state.state == STALE and "no run.json" in state.detail
    (run.run_dir / "run.json").write_text("{")  # unreadable: never finished
    state = run_state(run)
    assert state.state == FAILED and not state.readable
    assert state.detail.startswith(f"{run.run_dir / 'run.json'} is unreadable")
    assert state.detail.endswith("not counted as finished")
    # A crash after the last checkpoint, before run.json recorded the end: the checkpoint
    # says how far the run got, so it is finished.
    _fake_run(run, 3)
    assert json.loads((run.run_dir / "run.json").read_text())["status"] == "running"
    assert run_state(run).state == FINISHED
    # The last attempt failed (non-finite loss, say): reported, and retried from its checkpoint.
    _fake_run(run, 2)
    data = json.loads((run.run_dir / "run.json").read_text())
    finish_provenance(run.run_dir, data, "failed", 2, "non-finite loss at epoch 3, step 1")
    state = run_state(run)
    assert state.state == FAILED and "non-finite loss at epoch 3" in state.detail
    assert command_for(run, state)[-2:] == ["--resume", str(run.run_dir)]


def test_interrupt_reports_what_became_of_the_run(tmp_path):
    (run,) = plan_runs(tiny_table(config("a", 2)), tiny_options(tmp_path, seeds=(0,), epochs=3))
    _fake_run(run, 3)
    assert interrupted_message(run, "exit code 0") == (
        "interrupted: a seed 0 (exit code 0) had finished all its epochs before it stopped; it "
        "counts as finished; finished runs are kept: run the same command again to continue")
    _fake_run(run, 2)
    assert "(exit code 130) keeps its checkpoint of epoch 2 of 3;" in \
        interrupted_message(run, "exit code 130")


def test_mean_std_formats():
    assert mean_std([]) == "" and mean_std([26.6]) == "26.60"
    assert mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00"  # sample standard deviation


def test_render_shows_pending_failed_and_costs(tmp_path):
    table = build_table("ensembles", ["digits"]).only(["digits-resnet32-2net"])
    options = tiny_options(tmp_path, seeds=(0, 1))
    (run0, run1) = plan_runs(table, options)
    result = TableResult(table, [run0, run1])
    result.outcomes[("digits-resnet32-2net", 0)] = Outcome(
        FINISHED, {"epoch": 1, "test_acc": {"branch_0": 0.5, "branch_1": 0.5, "ensemble": 0.75}},
        commits=("abc123def456",))
    result.outcomes[("digits-resnet32-2net", 1)] = Outcome("failed", error="exit code 1: boom")
    text = render(result, options)
    row = next(line for line in text.splitlines() if line.startswith("| digits-resnet32-2net"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:9] == ["2-Net", "fp32", "25.00", "", "0", "1", "", "abc123def456"]
    params, train_flops, test_flops = cells[9:]
    assert params.endswith("M") and float(train_flops) > float(test_flops) > 0
    assert "FLOPs = 2 x multiply-adds" in text and "boom" in text


def test_rows_show_their_commits_and_flag_mixed_ones_and_stale_runs(tmp_path):
    table = tiny_table(config("a", 2))
    options = tiny_options(tmp_path, seeds=(0, 1, 2))
    runs = plan_runs(table, options)
    result = TableResult(table, runs)
    acc = {"epoch": 1, "test_acc": {"branch_0": 0.5, "branch_1": 0.5, "ensemble": 0.75}}
    result.outcomes[("a", 0)] = Outcome(FINISHED, acc, commits=("aaa",))
    result.outcomes[("a", 1)] = Outcome(FINISHED, acc, commits=("bbb-dirty",))
    result.outcomes[("a", 2)] = Outcome(STALE, error="trained with --lr 0.01 (plan 0.1)")
    text = render(result, options)
    row = next(line for line in text.splitlines() if line.startswith("| a "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5:9] == ["0 1", "", "2", "MIXED: aaa, bbb-dirty"]
    assert "## Stale runs (not counted; `--rerun-stale` replaces them)" in text
    assert f"- a seed 2: trained with --lr 0.01 (plan 0.1) ({runs[2].run_dir})" in text


def test_cli_dry_run_prints_commands_and_writes_nothing(tmp_path, capsys):
    code = main(["branches", "--dry-run", "--seeds", "0", "--epochs", "1", "--dataset",
                 "digits", "--out-dir", str(tmp_path), "--", "--depth", "8"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == 5 and out[0].startswith("[1/5] digits-resnet32-m1 seed 0: "
                                                             "python -m one_fast.train")
    assert all(line.endswith("--depth 8") for line in out)
    assert not any(tmp_path.iterdir())
    assert main(["main", "--only", "x", "--dry-run"]) == 1
    assert "--only: x not in table 'main'" in capsys.readouterr().err


def test_costs_the_trainer_stored_are_shown_as_stored(tmp_path):
    from one_fast.experiments.runner import stored_costs

    table = build_table("ensembles", ["digits"]).only(["digits-resnet32-one"])
    (run,) = plan_runs(table, tiny_options(tmp_path, seeds=(0,)))
    run.run_dir.mkdir(parents=True)
    costs = {"train_flops": 7.0e9, "student_flops": 1.0e9, "ensemble_flops": 2.0e9,
             "student_params": 1_000_000, "ensemble_params": 3_000_000}
    (run.run_dir / "metrics.jsonl").write_text(
        json.dumps({"epoch": 1, "costs": costs}) + "\n" + json.dumps({"epoch": 2}) + "\n")
    assert stored_costs(run.run_dir) == costs
    result = TableResult(table, [run])
    result.outcomes[(run.config.name, 0)] = Outcome(
        FINISHED, {"epoch": 2, "test_acc": {"branch_0": 0.5, "ensemble": 0.5}}, costs)
    rows = [line for line in render(result, tiny_options(tmp_path)).splitlines()
            if line.startswith("| digits-resnet32-one")]
    assert rows[0].endswith("| 1.00M | 7e+09 | 1e+09 |")  # ONE: the student's test cost
    assert rows[1].endswith("| 3.00M | 7e+09 | 2e+09 |")  # ONE-E: the whole network's
