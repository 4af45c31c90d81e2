"""``python -m one_fast.predict MODEL IMAGES...``: top-k classes for images with a trained model.

    python -m one_fast.predict student.pt2 seven.png three.jpg --top-k 3
    python -m one_fast.predict runs/digits batch.npy --member ensemble

MODEL is a file written by ``python -m one_fast.export`` (any format; it carries the input
size, normalisation and class names, and holds the one member it was exported with) or a run
folder (``--member`` picks a branch or the ensemble). IMAGES are PNG/JPEG files (grey or RGB,
of the training image size unless ``--resize``), normalised as the training data were, or
``.npy`` batches (N, C, H, W) or (N, H, W, C) of uint8 pixels (0-255) or float pixels in
[0, 1] (torchvision's ``ToTensor`` convention), normalised here too; ``--normalized`` takes
float batches already normalised with the run's mean and std as they are. Float values outside
[0, 1] without ``--normalized`` are refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .data import DatasetNotFoundError
from .deploy import ExportError, InputSpec, load_exported, parse_member, read_inputs, select
from .engine.checkpoint import CheckpointError
from .runs import load_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m one_fast.predict",
        description="Top-k classes for image files or .npy batches, with an exported model "
                    "or a run folder.")
    parser.add_argument("model", help="exported file (python -m one_fast.export) or run folder")
    parser.add_argument("images", nargs="+", help="PNG/JPEG files and/or .npy batches")
    parser.add_argument("--top-k", type=int, default=3, help="classes to show per image")
    parser.add_argument("--member", default=None,
                        help="with a run folder: branch index (default 0) or 'ensemble' (an "
                             "exported file holds the one member it was exported with)")
    parser.add_argument("--resize", action="store_true",
                        help="resize images of another size to the training size (bilinear)")
    parser.add_argument("--normalized", action="store_true",
                        help="float .npy batches are already normalised with the run's mean "
                             "and std (default: float values are pixels in [0, 1], as "
                             "torchvision's ToTensor gives; uint8 values are 0-255 pixels)")
    parser.add_argument("--data-dir", default=None,
                        help="with a run folder: where its dataset is, if the run has no "
                             "inputs.json (runs of older versions)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _model(path: Path, member: str | None, data_dir: str | None):
    """(function images -> (N, C) outputs, InputSpec, description) for a file or a run."""
    if path.is_dir():
        run = load_run(path, "cpu", data_dir=data_dir, load_data=False)
        if member is None:  # the method's student: branch 0, OKDDip's leader
            member = str(run.method.student_branch(run.model.num_branches))
        module = select(run.model, run.method, parse_member(member))
        return module, run.inputs, f"{'ensemble' if member == 'ensemble' else 'branch ' + member}" \
            f" of {path}"
    exported = load_exported(path)
    held = exported.meta.get("member")
    what = "ensemble" if held == "ensemble" else f"branch {held}"
    if member is not None and parse_member(member) != held:
        raise ValueError(f"--member {member}: {path} is an exported file, which holds one "
                         f"member ({what}); export member {member} from its run folder "
                         f"(python -m one_fast.export RUN_DIR --member {member}), or predict "
                         f"with the run folder itself")
    return exported.run, exported.inputs, f"{what} exported to {path} ({exported.format})"


@torch.no_grad()
def predict(run, spec: InputSpec, images: list[str], top_k: int, resize: bool = False,
            normalized: bool = False) -> list[dict]:
    """Top-k predictions for each input row.

    Args:
        run: maps float32 (N, C, H, W) network input to (N, classes) logits or log-probabilities.
        spec: the network's input description.
        images: image files and .npy batches.
        top_k: classes per row (1 .. number of classes).
        resize: resize images of another size.
        normalized: float ``.npy`` batches are already normalised (see :func:`read_inputs`).

    Returns:
        One ``{"input": name, "top": [{"class": k, "name": ..., "probability": p}, ...]}`` per
        row, most probable first (softmax of the model's output).
    """
    if not 1 <= top_k <= spec.num_classes:
        raise ValueError(f"--top-k must be in 1..{spec.num_classes}, got {top_k}")
    x, labels = read_inputs(images, spec, resize, normalized)
    probabilities = torch.softmax(run(x).float(), dim=1)
    values, indices = probabilities.topk(top_k, dim=1)
    return [{"input": label,
             "top": [{"class": k, "name": spec.class_name(k), "probability": p}
                     for k, p in zip(row_k.tolist(), row_p.tolist(), strict=True)]}
            for label, row_k, row_p in zip(labels, indices, values, strict=True)]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    try:
        run, spec, what = _model(Path(args.model), args.member, args.data_dir)
        rows = predict(run, spec, args.images, args.top_k, args.resize,
                       args.normalized)
    except (ValueError, FileNotFoundError, CheckpointError, DatasetNotFoundError,
            ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"model": what, "predictions": rows}, indent=2))
        return 0
    print(f"{what}:")
    for row in rows:
        top = ", ".join(f"{t['name']} {100 * t['probability']:.1f}%" for t in row["top"])
        print(f"  {row['input']}: {top}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
