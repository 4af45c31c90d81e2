"""A tiny digits table for the runner's tests: two ONE configurations, depth 8, one epoch."""

from __future__ import annotations

from pathlib import Path

from one_fast.experiments.runner import RunnerOptions
from one_fast.experiments.tables import ENSEMBLE, STUDENT, Configuration, Row, Table

# Trainer flags that shrink every run: later flags win over the table's own --depth.
TINY = ("--depth", "8", "--batch-size", "128")


def config(name: str, m: int) -> Configuration:
    return Configuration(name, "digits", "resnet32", "one", m,
                         (Row("ONE", STUDENT, 1.0), Row("ONE-E", ENSEMBLE)))


def kd_student(teacher: str) -> Configuration:
    """A KD student ("student") of the configuration ``teacher``, distilled from its branch 0."""
    return Configuration("student", "digits", "resnet32", "kd", 1, (Row("KD", STUDENT),),
                         teacher=teacher, teacher_output="0")


def tiny_table(*configs: Configuration) -> Table:
    return Table("tiny", "tiny digits table", configs or (config("m2", 2), config("m3", 3)))


def tiny_options(out_dir: Path, seeds=(0, 1), epochs: int = 1) -> RunnerOptions:
    return RunnerOptions(out_dir=out_dir, seeds=tuple(seeds), epochs=epochs,
                         precision="none", extra_flags=TINY)
