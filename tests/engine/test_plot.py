"""plot_metrics writes a real PNG for short runs, missing evaluations and resumed runs."""

from __future__ import annotations

import json

import pytest

from one_fast.engine import MetricsLogger, plot_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(epoch, acc=True):
    rec = {"epoch": epoch, "step": 7 * epoch, "lr": 0.1, "kl_weight": 0.1 * epoch,
           "train": {"loss": 3.0 / epoch, "ce_branches": 2.4 / epoch,
                     "ce_ensemble": 0.7 / epoch, "kl": 0.05 * epoch},
           "images_per_s": 1000.0, "epoch_time_s": 2.0, "peak_memory_mb": None}
    if acc:
        rec["test_acc"] = {f"branch_{i}": 0.5 + 0.1 * epoch + 0.01 * i for i in range(3)}
        rec["test_acc"]["ensemble"] = 0.6 + 0.1 * epoch
    return rec


def write(run, records):
    with MetricsLogger(run) as logger:
        for rec in records:
            logger.log(rec)
    return run / "metrics.jsonl"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000  # axes, lines and text, not an empty canvas
    assert sorted(p.name for p in path.parent.iterdir() if p.suffix != ".jsonl") == [path.name]


@pytest.mark.parametrize("records", [
    pytest.param([record(1)], id="one_epoch"),
    pytest.param([record(1), record(2), record(3)], id="three_epochs"),
    pytest.param([record(1, acc=False)], id="one_epoch_no_eval"),
    pytest.param([record(1, acc=False), record(2), record(3, acc=False)], id="eval_some_epochs"),
    pytest.param([record(1), record(2), record(2), record(3)], id="resumed_duplicate_epoch"),
])
def test_plot_writes_png(tmp_path, records):
    jsonl = write(tmp_path, records)
    png = plot_metrics(jsonl, tmp_path / "curves.png", title="digits, ONE ResNet-8")
    assert png == tmp_path / "curves.png"
    assert_png(png)


def test_plot_from_run_dir_into_new_dir(tmp_path):
    write(tmp_path, [record(1), record(2)])
    png = plot_metrics(tmp_path, tmp_path / "plots" / "curves.png")
    assert_png(png)


def test_plot_overwrites_atomically(tmp_path):
    jsonl = write(tmp_path, [record(1)])
    png = plot_metrics(jsonl, tmp_path / "curves.png")
    first = png.read_bytes()
    with open(jsonl, "a") as f:
        f.write(json.dumps(record(2)) + "\n")
    plot_metrics(jsonl, png)
    assert png.read_bytes() != first
    assert_png(png)


def test_plot_without_records_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no epoch records"):
        plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
