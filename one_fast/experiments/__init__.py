"""The paper's tables as one command each: ``python -m one_fast.experiments TABLE``.

:mod:`.tables` holds each table's configurations and the paper's figures, :mod:`.runner` trains
them (one ordinary ``one_fast.train`` run per configuration and seed), :mod:`.report` writes
TABLE.md. Launchers run the planned runs elsewhere: :mod:`.local_launcher` (``--parallel``),
:mod:`.slurm_launcher` (``--launcher slurm``), each run a :class:`.jobs.RunJob`.
"""

from .report import render, write_table
from .runner import RunnerOptions, TableResult, plan_runs, run_table
from .tables import TABLES, Configuration, Row, Table, build_table

__all__ = ["TABLES", "Configuration", "Row", "RunnerOptions", "Table", "TableResult",
           "build_table", "plan_runs", "render", "run_table", "write_table"]
