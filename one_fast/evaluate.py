"""``python -m one_fast.evaluate RUN_DIR``: accuracy of every branch and the ensemble of a run.

Loads the run's checkpoint and config, evaluates with the trainer's own evaluator on the test
(or train) split, and prints the accuracies; on the test split with the run's settings they
equal the last test record of the run's ``metrics.jsonl`` (the command says whether they do).
``--per-class`` adds per-class accuracy, ``--loss`` the method's loss terms, ``--json`` prints
one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .data import DatasetNotFoundError
from .data.imagenet import DaliNotInstalledError
from .engine.breakdown import mean_loss_terms, per_class_accuracy
from .engine.checkpoint import CheckpointError
from .engine.evaluation import Evaluator
from .engine.metrics import read_metrics
from .engine.schedule import kl_weight
from .runs import LoadedRun, eval_loader, load_run
from .runs.assembly import autocast_dtype, training_module
from .runs.provenance import provenance_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m one_fast.evaluate",
        description="Evaluate a training run's checkpoint: top-1 accuracy of every branch "
                    "(member) and of the ensemble.")
    parser.add_argument("run_dir", help="run folder written by python -m one_fast.train")
    parser.add_argument("--data-dir", default=None,
                        help="where the dataset is (default: the run's --data-dir)")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="split to evaluate (default: test); train is unaugmented")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: the run's --batch-size)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--per-class", action="store_true", help="also per-class accuracy")
    parser.add_argument("--loss", action="store_true",
                        help="also the method's loss terms (mean per image, the last epoch's "
                             "distillation weight)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device here")
    return device


def last_test_record(run_dir) -> dict | None:
    """The last ``metrics.jsonl`` record holding test accuracies, or None."""
    try:
        records = read_metrics(run_dir)
    except FileNotFoundError:
        return None
    tested = [r for r in records if "test_acc" in r]
    return tested[-1] if tested else None


def evaluate_run(run: LoadedRun, split: str = "test", batch_size: int | None = None,
                 device: torch.device | str = "cpu", per_class: bool = False,
                 loss: bool = False) -> dict:
    """Evaluate a loaded run; the record the command prints (see ``--json``).

    Returns:
        ``{"run_dir", "provenance" (one line: the commit and config hash it was trained
        with), "epoch", "split", "images", "accuracy": {name: fraction},
        "recorded": {name: fraction} | None, "matches_recorded": bool | None,
        "per_class": {name: [fraction | None per class]}, "class_names" (with per_class),
        "loss_terms": {term: mean}, "kl_weight" (with loss)}``.
    """
    device = torch.device(device)
    loader = eval_loader(run, split, batch_size, device)
    run.model.to(device)
    evaluator = Evaluator(run.model, run.method, amp_dtype=autocast_dtype(run.config, device))
    accuracy = evaluator(loader.eval_batches())
    recorded = None
    if split == "test":
        record = last_test_record(run.run_dir)
        if record is not None and record.get("epoch") == run.epoch:
            recorded = record["test_acc"]
    result = {"run_dir": str(run.run_dir), "provenance": provenance_line(run.run_dir),
              "epoch": run.epoch, "split": split,
              "images": loader.num_samples, "accuracy": accuracy, "recorded": recorded,
              "matches_recorded": None if recorded is None else recorded == accuracy}
    if per_class:
        result["per_class"] = per_class_accuracy(run.model, run.method,
                                                 run.inputs.num_classes, loader.eval_batches())
        result["class_names"] = [run.inputs.class_name(k) for k in range(run.inputs.num_classes)]
    if loss:
        weight = kl_weight(max(run.epoch - 1, 0), run.config.kl_weight, run.config.rampup)
        result["kl_weight"] = weight
        # kd's loss reads the frozen teacher's outputs too: the trainer's own pairing
        module = training_module(run.config, run.model, run.inputs.num_classes, device)
        result["loss_terms"] = mean_loss_terms(module, run.method, loader.eval_batches(),
                                               weight)
    return result


def format_result(result: dict) -> str:
    """The human-readable report of :func:`evaluate_run`'s record."""
    lines = [f"{result['run_dir']} (epoch {result['epoch']}): {result['split']} top-1 on "
             f"{result['images']} images; {result['provenance']}"]
    lines += [f"  {name:<10} {100 * value:6.2f}%" for name, value in result["accuracy"].items()]
    if result["matches_recorded"] is True:
        lines.append("equal to the run's last metrics.jsonl test record")
    elif result["matches_recorded"] is False:
        lines.append(f"differs from the run's last metrics.jsonl test record "
                     f"{result['recorded']} (another device, precision or code version?)")
    if "loss_terms" in result:
        terms = ", ".join(f"{name} {value:.4f}" for name, value in result["loss_terms"].items())
        lines.append(f"loss terms (distillation weight {result['kl_weight']:g}): {terms}")
    if "per_class" in result:
        names = list(result["per_class"])
        # Class names in full up to 24 characters (ImageNet's wnids are 9: n01440764).
        width = min(max([8, *(len(label) for label in result["class_names"])]), 24)
        lines.append(f"{'per class:':<{width + 2}} " + " ".join(f"{n:>9}" for n in names))
        for k, label in enumerate(result["class_names"]):
            cells = [result["per_class"][n][k] for n in names]
            text = " ".join(f"{'-':>9}" if c is None else f"{100 * c:8.2f}%" for c in cells)
            lines.append(f"  {label[:width]:<{width}} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    try:
        device = _device(args.device)
        run = load_run(args.run_dir, device, data_dir=args.data_dir)
        result = evaluate_run(run, args.split, args.batch_size, device, args.per_class,
                              args.loss)
    except (ValueError, FileNotFoundError, CheckpointError, DatasetNotFoundError,
            DaliNotInstalledError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
