"""EpochProgress: quiet when disabled, few whole lines when the output is not a terminal; the
epoch line."""

from __future__ import annotations

import io

from one_fast.engine import EpochProgress
from one_fast.engine.progress import epoch_line


def test_disabled_prints_nothing(capsys):
    bar = EpochProgress(100, epoch=1, enabled=False)
    for _ in range(100):
        bar.update(128, loss=1.0)
    bar.close()
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert bar.images == 12_800 and bar.steps == 100 and bar.loss == 1.0


def test_non_tty_prints_few_whole_lines():
    stream = io.StringIO()  # not a TTY, like a CI log or a redirected file
    with EpochProgress(2000, epoch=3, total_epochs=300, file=stream) as bar:
        for step in range(2000):
            bar.update(128, loss=2.5 - step / 1000 if step % 50 == 0 else None)
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) == 1, lines  # a short epoch: just the final line, not one per step
    last = lines[-1]
    assert last.startswith("epoch 3/300") and "2000/2000" in last
    assert "loss=0.5500" in last and "img/s" in last  # last loss given at step 1950
    assert bar.images_per_s > 0


def test_non_tty_interval_gives_periodic_lines(monkeypatch):
    stream = io.StringIO()
    bar = EpochProgress(50, epoch=1, file=stream, mininterval=0.0)
    for _ in range(50):
        bar.update(10, loss=0.3)
    bar.close(loss=0.25)
    bar.close()  # idempotent
    lines = stream.getvalue().splitlines()
    assert len(lines) > 3  # each redraw is a whole line of its own
    assert all(line.startswith("epoch 1") for line in lines)
    assert "loss=0.3000" in lines[-2] and "loss=0.2500" in lines[-1]


def test_epoch_line_reports_the_input_pipeline_apart_from_the_step():
    record = {"epoch": 3, "train": {"loss": 1.0}, "lr": 0.1, "images_per_s": 2450.0,
              "epoch_time_s": 2.0}
    assert "input" not in epoch_line(record, 90)  # in-memory datasets: no pipeline stats
    record.update(step_images_per_s=2600.0,
                  input={"images_per_s": 2460.0, "wait_fraction": 0.058, "build_s": 0.1})
    line = epoch_line(record, 90)
    assert line.endswith("| step 2,600 img/s, input 2,460 img/s, waited for data 6%"), line
    assert "2,450 img/s" in line
