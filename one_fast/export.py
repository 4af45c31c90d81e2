"""``python -m one_fast.export RUN_DIR --out FILE``: ship a run's student (or ensemble) as a file.

    python -m one_fast.export runs/digits --out runs/student.pt2           # student, torch.export
    python -m one_fast.export runs/digits --member ensemble --format onnx --out runs/one_e.onnx

Takes branch ``--member`` (default: the method's student -- branch 0, OKDDip's leader) out of
the run's network as a plain single-branch network (or the whole ensemble as one module),
writes it as pt2 (``torch.export``, the default), onnx, torchscript or state_dict, checks that
the written file reproduces the in-memory module on a batch of test images, and prints its
parameters, FLOPs per image and file size.

The input description comes from the run's ``inputs.json``; the dataset is read only for the
check batch. An ImageNet run is checked on its first validation images when its folder and
NVIDIA DALI are here, and on generated inputs otherwise; the command says which.

The Python API is re-exported here: ``from one_fast.export import extract_branch,
extract_ensemble, load_exported`` (the library lives in :mod:`one_fast.deploy`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .data import DatasetNotFoundError
from .data.imagenet import DaliNotInstalledError
from .deploy import (
    FORMATS,
    ExportError,
    PlainNetwork,
    describe,
    export_module,
    extract_branch,
    extract_ensemble,
    load_exported,
    parse_member,
    select,
)
from .engine.checkpoint import CheckpointError
from .runs import LoadedRun, eval_loader, load_run

CHECK_IMAGES = 8  # images the written file is checked on

__all__ = ["PlainNetwork", "extract_branch", "extract_ensemble", "load_exported", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m one_fast.export",
        description="Export a trained run's student (one branch as a plain network) or its "
                    "ensemble to a file, checked against the in-memory model.")
    parser.add_argument("run_dir", help="run folder written by python -m one_fast.train")
    parser.add_argument("--member", default=None,
                        help="branch index to export (default: the method's student -- branch "
                             "0, OKDDip's leader, the last branch), or 'ensemble'")
    parser.add_argument("--format", default="pt2",
                        help=f"one of {', '.join(FORMATS)} (default pt2: torch.export)")
    parser.add_argument("--out", required=True, help="file to write (atomically)")
    parser.add_argument("--data-dir", default=None,
                        help="where the run's dataset is (default: the run's --data-dir); "
                             "the check batch is taken from its test split")
    return parser


def check_batch(run: LoadedRun) -> tuple[torch.Tensor, str]:
    """Network input to check the written file on, and what it is.

    The run's first test images, normalised as in training (ImageNet: its first validation
    images through the validation pipeline, when the folder and DALI are here); otherwise
    standard-normal inputs of the network's input shape (seeded).
    """
    spec = run.inputs
    if run.dataset is not None:
        return (spec.normalize(run.dataset.test_images[:CHECK_IMAGES]),
                f"{CHECK_IMAGES} test images")
    reason = "the run's dataset is not loaded"
    if run.config.dataset == "imagenet":
        try:
            images, _ = next(iter(eval_loader(run, "test", CHECK_IMAGES, "cpu").eval_batches()))
            return images, f"{len(images)} validation images of {run.config.data_dir}"
        except (DatasetNotFoundError, DaliNotInstalledError) as err:
            reason = (f"no ImageNet validation images at {run.config.data_dir}"
                      if isinstance(err, DatasetNotFoundError) else "NVIDIA DALI is not installed")
    generator = torch.Generator().manual_seed(0)
    return (torch.randn((CHECK_IMAGES, *spec.image_shape), generator=generator),
            f"{CHECK_IMAGES} generated inputs (standard normal; {reason})")


def export_run(run: LoadedRun, member: int | str, fmt: str, out: str | Path) -> dict:
    """Extract ``member`` of a loaded run, write it to ``out`` in ``fmt``, checked.

    Returns:
        The file's description plus "file", "bytes", "max_abs_difference" (on the check
        batch) and "checked_on" (what the check batch was).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run.model.cpu()
    module = select(run.model, run.method, member)
    meta = describe(module, member, run.method, run.inputs,
                    source={"run_dir": str(run.run_dir), "epoch": run.epoch})
    batch, checked_on = check_batch(run)
    path, difference = export_module(module, fmt, out, meta, batch)
    return {**meta, "format": fmt, "file": str(path), "bytes": path.stat().st_size,
            "max_abs_difference": difference, "checked_on": checked_on}


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    try:
        member = None if args.member is None else parse_member(args.member)
        if args.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got "
                             f"{args.format!r}")
        run = load_run(args.run_dir, "cpu", data_dir=args.data_dir)
        if member is None:
            member = run.method.student_branch(run.model.num_branches)
        report = export_run(run, member, args.format, args.out)
    except (ValueError, FileNotFoundError, CheckpointError, DatasetNotFoundError,
            ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    what = ("the ensemble" if member == "ensemble" else f"branch {member}") + \
        f" of {report['source']['run_dir']} (epoch {report['source']['epoch']})"
    c, h, w = run.inputs.image_shape
    print(f"wrote {report['file']} ({report['format']}, {_size(report['bytes'])}): {what}\n"
          f"  {report['params']:,} parameters, {report['flops_per_image']:.4g} FLOPs per "
          f"{c}x{h}x{w} image ({report['flops_convention']}), output: {report['output']}\n"
          f"  checked against the in-memory model on {report['checked_on']}: largest "
          f"difference {report['max_abs_difference']:.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
