"""Deprecated path of :func:`one_fast.runs.load_run` (the run-folder reader moved to the run
assembly layer, :mod:`one_fast.runs`); kept so that ``from one_fast.engine.runs import load_run``
written against earlier versions keeps working."""

from __future__ import annotations

import warnings

from ..runs.loading import LoadedRun, load_run

warnings.warn("one_fast.engine.runs is deprecated: import load_run from one_fast.runs",
              DeprecationWarning, stacklevel=2)

__all__ = ["LoadedRun", "load_run"]
