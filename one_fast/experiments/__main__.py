"""``python -m one_fast.experiments TABLE [options] [-- extra trainer flags]``.

Trains every configuration x seed of one of the tables (the ONE paper's main, compare,
ensembles, ablation, branches; okd, winycg/MCL-OKD's comparison) as ordinary
``python -m one_fast.train`` runs, skipping finished runs and resuming unfinished ones, and
rewrites ``<out-dir>/<TABLE>/TABLE.md`` after every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data import DATASETS
from ..runs.interrupt import sigint_stops
from .launch_cli import add_launcher_flags, run_launcher, uses_launcher
from .report import write_table
from .runner import PRECISIONS, RunInterrupted, RunnerOptions, run_table, table_dir
from .tables import TABLES, build_table


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m one_fast.experiments",
        description="Reproduce one of the ONE paper's tables, or okd (online distillation "
                    "after ONE under winycg/MCL-OKD's protocol): every configuration x seed is "
                    "one `python -m one_fast.train` run in its own folder (the command is "
                    "printed); finished runs are skipped, unfinished ones resume. Trainer flags "
                    "after `--` are added to every run (e.g. `-- --fused --download`).")
    parser.add_argument("table", choices=list(TABLES), metavar="TABLE",
                        help=f"one of: {', '.join(TABLES)}")
    parser.add_argument("--dataset", nargs="+", choices=DATASETS, default=None,
                        help="datasets to run (default: the paper's: cifar10 cifar100 svhn for "
                             "main, cifar100 for the others)")
    parser.add_argument("--data-dir", default=None, help="the trainer's --data-dir")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="one run per seed (default: 0 1 2)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the recipe's epochs (the trainer scales its schedule)")
    parser.add_argument("--out-dir", default="runs/experiments",
                        help="runs and TABLE.md go under OUT_DIR/TABLE")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the trainer's --amp: auto = bf16 on CUDA, none (fp32) on the CPU")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="run only these configurations (and the teachers they need)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    add_launcher_flags(parser)
    parser.add_argument("--rerun-stale", action="store_true",
                        help="replace stale runs (trained with other settings, or without "
                             "run.json) and unreadable ones (their folder is replaced as by "
                             "the trainer's --overwrite); without it they are reported, never "
                             "counted")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 1 when a run failed or is stale, 130 after Ctrl-C,
    else 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    options = RunnerOptions(out_dir=Path(args.out_dir), seeds=tuple(args.seeds),
                            epochs=args.epochs, data_dir=args.data_dir,
                            precision=args.precision, extra_flags=tuple(extra),
                            dry_run=args.dry_run, rerun_stale=args.rerun_stale)
    with sigint_stops(once=False):  # also when started with SIGINT ignored (nohup ... &)
        return _run(args, options)


def _run(args: argparse.Namespace, options: RunnerOptions) -> int:
    try:
        table = build_table(args.table, args.dataset)
        if args.only:
            table = table.only(args.only)
        if uses_launcher(args):
            return run_launcher(args, table, options)
        path = table_dir(table, options) / "TABLE.md"
        result = run_table(table, options,
                           on_update=None if args.dry_run else
                           lambda r: write_table(r, options, path))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except RunInterrupted as err:
        print(err, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted between runs: finished runs are kept; run the same command again "
              "to continue", file=sys.stderr)
        return 130
    if args.dry_run:
        return 0
    write_table(result, options, path)
    failed = [key for key, o in result.outcomes.items() if o.status == "failed"]
    stale = [key for key, o in result.outcomes.items() if o.status == "stale"]
    done = sum(o.status == "finished" for o in result.outcomes.values())
    print(f"table: {path} ({done} of {len(result.runs)} runs finished"
          f"{', ' + str(len(failed)) + ' failed' if failed else ''}"
          f"{', ' + str(len(stale)) + ' stale (--rerun-stale replaces them)' if stale else ''})")
    return 1 if failed or stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
