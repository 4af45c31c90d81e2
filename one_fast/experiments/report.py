"""TABLE.md: measured test error (mean ± std over seeds) beside the paper's, the commits of
the runs each row averages, and the runs not counted (failed, stale)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from ..costs import FLOPS_CONVENTION
from ..files import atomic_write
from ..runs.provenance import code_label, code_version
from .run_costs import configuration_costs
from .runner import (
    FINISHED,
    STALE,
    RunnerOptions,
    TableResult,
    precision_label,
    resolve_precision,
)
from .tables import OUTPUT_METRIC, STUDENT, Configuration, Row


def provenance() -> str:
    """The code that writes the table: ``commit <hash>[-dirty]`` of the package's checkout,
    or the installed package's version where there is no git checkout."""
    label = code_label(code_version())
    return label if label.startswith("one_fast") else f"commit {label}"


def commits_cell(result: TableResult, config: Configuration) -> str:
    """The commits of the finished runs a row averages (from their run.json): one, or
    ``MIXED: a, b`` when they differ (or one run was resumed under another commit)."""
    labels: list[str] = []
    for run in result.runs:
        outcome = result.outcome(run)
        if run.config is config and outcome.status == FINISHED:
            labels += [c for c in outcome.commits if c not in labels]
    if len(labels) > 1:
        return "MIXED: " + ", ".join(labels)
    return labels[0] if labels else ""


def errors_percent(result: TableResult, config: Configuration, row: Row) -> dict[int, float]:
    """Test error (%) of ``row`` per finished seed: 100 x (1 - top-1 accuracy of its output).

    A configuration with one member has no "ensemble" accuracy; its row reads branch 0.
    """
    out = {}
    for run in result.runs:
        if run.config is not config:
            continue
        outcome = result.outcome(run)
        if outcome.status != FINISHED or outcome.record is None:
            continue
        acc = outcome.record["test_acc"]
        key = row.metric or OUTPUT_METRIC[row.output]
        value = acc.get(key, acc.get("branch_0") if config.num_branches == 1 else None)
        if value is not None:
            out[run.seed] = 100.0 * (1.0 - float(value))
    return out


def mean_std(values: list[float]) -> str:
    """``"26.61 ± 0.20"`` (sample standard deviation), ``"26.61"`` for one value, "" for none."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _costs_cells(result: TableResult, config: Configuration, row: Row) -> list[str]:
    stored = next((result.outcome(r).costs for r in result.runs
                   if r.config is config and result.outcome(r).costs), None)
    try:
        costs = stored or configuration_costs(config).to_dict()
    except (ValueError, TypeError, RuntimeError) as err:
        return [f"({err})", "", ""]
    student = row.output == STUDENT or config.num_branches == 1
    test = costs["student_flops"] if student else costs["ensemble_flops"]
    params = costs["student_params"] if student else costs["ensemble_params"]
    return [f"{params / 1e6:.2f}M", f"{costs['train_flops']:.3g}", f"{test:.3g}"]


def render(result: TableResult, options: RunnerOptions) -> str:
    """The markdown of TABLE.md for the results so far."""
    table = result.table
    precision = precision_label(resolve_precision(options.precision))
    head = ["configuration", "row", "precision", "test error % (mean ± std)", "paper",
            "seeds finished", "seeds failed", "seeds stale", "commit"]
    if table.costs:
        head += ["params", "train FLOPs/img", "test FLOPs/img"]
    lines = [f"# {table.title}", "",
             f"{provenance()} · updated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} · seeds "
             f"{' '.join(map(str, options.seeds))} · epochs "
             f"{options.epochs if options.epochs else 'recipe (dataset preset)'}"
             + (" · extra trainer flags: " + " ".join(options.extra_flags)
                if options.extra_flags else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    failures, stale_runs = [], []
    for config in table.configurations:
        failed = [r for r in result.runs if r.config is config
                  and result.outcome(r).status == "failed"]
        stale = [r for r in result.runs if r.config is config
                 and result.outcome(r).status == STALE]
        failures += [(r, result.outcome(r).error) for r in failed]
        stale_runs += [(r, result.outcome(r).error) for r in stale]
        for row in config.rows:
            errors = errors_percent(result, config, row)
            cells = [f"{config.name} ({config.label})", row.label, precision,
                     mean_std([errors[s] for s in sorted(errors)]),
                     "" if row.paper is None else f"{row.paper:.2f}",
                     " ".join(map(str, sorted(errors))),
                     " ".join(str(r.seed) for r in failed),
                     " ".join(str(r.seed) for r in stale), commits_cell(result, config)]
            if table.costs:
                cells += _costs_cells(result, config, row)
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Test error = 100 x (1 - top-1 accuracy) after the last epoch; row \"ONE\" "
              "and other single-network rows read branch 0 (the deployable student); "
              "ensemble rows the gated ensemble (ONE-E) or the members' averaged "
              "probabilities (m-Net, DML). Paper: Lan, Zhu & Gong, NeurIPS 2018 (empty where "
              "no figure is carried). Precision: the trainer's --amp (bf16 autocast, or fp32)."]
    if table.costs:
        lines.append(f"Costs per image, {FLOPS_CONVENTION}: training = forward + backward of "
                     "every member (and gate), test = the row's deployed network.")
    lines += [f"- {note}" for note in table.notes]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r.config.name} seed {r.seed}: {why} (log: {r.log_path})"
                  for r, why in failures]
    if stale_runs:
        lines += ["", "## Stale runs (not counted; `--rerun-stale` replaces them)", ""]
        lines += [f"- {r.config.name} seed {r.seed}: {why} ({r.run_dir})"
                  for r, why in stale_runs]
    return "\n".join(lines) + "\n"


def write_table(result: TableResult, options: RunnerOptions, path: Path) -> Path:
    """Write TABLE.md atomically (a reader never sees half a table)."""
    text = render(result, options)
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


__all__ = ["commits_cell", "errors_percent", "mean_std", "provenance", "render",
           "write_table"]
