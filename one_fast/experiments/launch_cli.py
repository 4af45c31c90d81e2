"""The experiment command's launcher flags (``--launcher``, ``--parallel``, ``--slurm-*``,
``--no-wait``, ``--status``) and what they do once the table is planned."""

from __future__ import annotations

import argparse
import sys

from .local_launcher import launch_local
from .report import render
from .runner import RunnerOptions, shown_command
from .slurm import SlurmError, parse_time
from .slurm_launcher import (
    SlurmOptions,
    launch_slurm,
    slurm_jobs,
    slurm_precision,
    wait_for_jobs,
)
from .status import collect_result, status_lines
from .tables import Table


def add_launcher_flags(parser: argparse.ArgumentParser) -> None:
    """Add the launcher's flags to the experiment command's parser."""
    group = parser.add_argument_group("launching (docs/cluster.md)")
    group.add_argument("--launcher", choices=("local", "slurm"), default="local",
                       help="local: on this machine (default); slurm: one Slurm job per run, "
                            "as job arrays (submitit; pip install 'one_fast[cluster]')")
    group.add_argument("--parallel", type=int, default=1, metavar="N",
                       help="local: N runs at once, each on its own GPU(s), or on its share of "
                            "the CPU threads (default 1)")
    group.add_argument("--gpus-per-run", type=int, default=1, metavar="G",
                       help="GPUs of one run (default 1); > 1 trains it with DDP, one process "
                            "per GPU (torchrun locally, srun tasks on Slurm); 0 on Slurm: a "
                            "CPU-only run")
    group.add_argument("--tasks-per-run", type=int, default=None, metavar="K",
                       help="slurm: processes of one run (default: --gpus-per-run, at least 1); "
                            "with --gpus-per-run 0, K CPU processes under gloo DDP")
    group.add_argument("--slurm-partition", default=None, help="sbatch --partition")
    group.add_argument("--slurm-time", default="24:00:00",
                       help="each job's time limit (minutes, H:MM:SS or D-HH:MM:SS; default "
                            "24:00:00); a run that needs longer is requeued and resumes")
    group.add_argument("--slurm-cpus-per-gpu", type=int, default=None, metavar="N",
                       help="sbatch --cpus-per-task for each task (one task per GPU)")
    group.add_argument("--slurm-mem", default=None, help="sbatch --mem, e.g. 32G")
    group.add_argument("--slurm-account", default=None, help="sbatch --account")
    group.add_argument("--slurm-qos", default=None, help="sbatch --qos")
    group.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                       help="a shell line run before each job (module load ..., source "
                            "venv/bin/activate); repeat for several")
    group.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                       help="another submitit SlurmExecutor parameter (e.g. signal_delay_s=300, "
                            "constraint=a100) or sbatch flag (e.g. reservation=x); repeatable")
    group.add_argument("--no-wait", action="store_true",
                       help="slurm: submit and exit; the jobs rewrite TABLE.md as they finish")
    group.add_argument("--status", action="store_true",
                       help="print each run's state (queued, running, finished, partial, "
                            "failed, stale, missing) and the table so far; trains nothing")


def uses_launcher(args: argparse.Namespace) -> bool:
    """Whether the flags ask for more than the one-run-after-another local runner (whose
    --dry-run also shows a local --parallel table's commands)."""
    if args.status or args.launcher == "slurm":
        return True
    return not args.dry_run and (args.parallel != 1 or args.gpus_per_run > 1)


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    """The Slurm options from the flags.

    Raises:
        ValueError: a malformed --slurm-time or --slurm-extra, or task and GPU counts that
            do not fit (see :class:`SlurmOptions`), naming the flag.
    """
    extra = []
    for item in args.slurm_extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm-extra expects KEY=VALUE, got {item!r}")
        extra.append((key.strip(), value.strip()))
    return SlurmOptions(partition=args.slurm_partition, time_min=parse_time(args.slurm_time),
                           gpus_per_run=args.gpus_per_run, tasks_per_run=args.tasks_per_run,
                           cpus_per_task=args.slurm_cpus_per_gpu, mem=args.slurm_mem,
                           account=args.slurm_account, qos=args.slurm_qos,
                           setup=tuple(args.slurm_setup), extra=tuple(extra))


def run_launcher(args: argparse.Namespace, table: Table, options: RunnerOptions) -> int:
    """``--status``, ``--launcher slurm`` or ``--launcher local --parallel N``.

    Returns:
        The exit code: 0, or 1 when a run failed or Slurm refused.
    """
    if args.status:
        if args.launcher == "slurm":
            options = slurm_precision(options, slurm_options(args))
        print("\n".join(status_lines(table, options)))
        print()
        print(render(collect_result(table, options), options), end="")
        return 0
    if args.launcher == "local":
        results = launch_local(table, options, args.parallel, args.gpus_per_run)
        return 1 if any(r.status == "failed" for r in results.values()) else 0
    slurm = slurm_options(args)
    if args.dry_run:
        for job in slurm_jobs(table, slurm_precision(options, slurm), slurm):
            print(f"{job.config} seed {job.seed}: {shown_command(job.command())}")
        return 0
    try:
        ids = launch_slurm(table, options, slurm)
    except SlurmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    status = f"python -m one_fast.experiments {table.name} --status --launcher slurm ..."
    if args.no_wait or not ids:
        print(f"{len(ids)} jobs submitted; follow them with `{status}` (same flags)")
        return 0
    unfinished = wait_for_jobs(ids, table, slurm_precision(options, slurm))
    return 1 if unfinished else 0


__all__ = ["add_launcher_flags", "run_launcher", "slurm_options", "uses_launcher"]
