"""The end-of-run PNG: loss terms and per-branch/ensemble test accuracy per epoch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write
from .metrics import read_metrics

# (record["train"] key, legend label, line style)
LOSS_TERMS = (
    ("ce_branches", "Σ CE branches", "-"),
    ("ce_ensemble", "CE ensemble", "-"),
    ("kl", "Σ KL (before w·T²)", "-"),
    ("loss", "total loss", ":"),
)


def _last_per_epoch(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    # A resumed run may log an epoch twice (crash after logging, before the checkpoint):
    # the later record is the one the final weights descend from.
    by_epoch = {r["epoch"]: r for r in records if isinstance(r.get("epoch"), (int, float))}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _branch_order(name: str) -> tuple[int, int, str]:
    # branch_0, branch_1, ..., branch_10, then ensemble and anything else.
    if name.startswith("branch_") and name[7:].isdigit():
        return (0, int(name[7:]), name)
    return (1, 0, name)


def _series(records, section: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        value = (record.get(section) or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(record["epoch"])
            ys.append(value)
    return xs, ys


def _draw(fig, records: list[dict[str, Any]], title: str | None) -> None:
    from matplotlib.ticker import MaxNLocator

    ax_loss, ax_acc = fig.subplots(1, 2)
    for key, label, style in LOSS_TERMS:
        xs, ys = _series(records, "train", key)
        if xs:
            ax_loss.plot(xs, ys, style, marker="o", markersize=3, label=label)
    ax_loss.set(title="training loss terms (epoch means)", xlabel="epoch", ylabel="loss")

    names = sorted({k for r in records for k in (r.get("test_acc") or {})}, key=_branch_order)
    for name in names:
        xs, ys = _series(records, "test_acc", name)
        ensemble = name == "ensemble"
        ax_acc.plot(xs, ys, "-", marker="o", markersize=4 if ensemble else 3,
                    linewidth=2.2 if ensemble else 1.2, color="black" if ensemble else None,
                    label="ensemble" if ensemble else name.replace("_", " "))
    if not names:
        ax_acc.text(0.5, 0.5, "no evaluation recorded", ha="center", va="center",
                    transform=ax_acc.transAxes)
    ax_acc.set(title="test top-1 accuracy", xlabel="epoch", ylabel="accuracy")

    epochs = [r["epoch"] for r in records]
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if len(epochs) == 1:  # otherwise matplotlib zooms to ±4% of one epoch
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    if title:
        fig.suptitle(title)


def plot_metrics(
    jsonl_path: str | os.PathLike,
    png_path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Plot a run's ``metrics.jsonl`` to a PNG (written atomically).

    Left: the epoch means of Σ CE over branches, CE of the ensemble, Σ KL and the total loss
    (``record["train"]``). Right: test accuracy of every branch and of the gated ensemble, at
    the epochs that evaluated (``record["test_acc"]``; records without it are skipped). If an
    epoch was logged twice (resume), its last record is used.

    Uses matplotlib's Agg canvas directly (no pyplot, no display, no global backend switch).

    Args:
        jsonl_path: the metrics file (or the run directory holding ``metrics.jsonl``).
        png_path: where to write the PNG (its directory is created if needed).
        title: optional figure title (e.g. the run's dataset and model).

    Returns:
        The PNG path.

    Raises:
        ValueError: the file holds no records with an ``"epoch"``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = _last_per_epoch(read_metrics(jsonl_path))
    if not records:
        raise ValueError(f"no epoch records to plot in {jsonl_path}")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    _draw(fig, records, title)
    return atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=110))
