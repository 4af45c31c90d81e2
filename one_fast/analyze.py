"""``python -m one_fast.analyze RUN_DIR``: the paper's model analysis (§4.6) of a trained run.

(a) weight-perturbation robustness: the student's (branch 0) and the ensemble's test error as
Gaussian noise of growing relative scale is added to the weights (several draws per scale);
(b) the members' agreement: pairwise disagreement and correlation, and their output variance
(runs with at least 2 members). Each writes a JSON and a PNG into --out-dir (default
RUN_DIR/analysis).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .analysis import (
    NOISE_MODEL,
    branch_agreement,
    member_outputs,
    perturbation_robustness,
    plot_agreement,
    plot_perturbation,
)
from .data.errors import DatasetNotFoundError
from .data.imagenet import DaliNotInstalledError
from .engine.checkpoint import CheckpointError
from .files import atomic_write
from .runs import load_analysed_run
from .runs.provenance import provenance_line

DEFAULT_SIGMAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)


def build_parser() -> argparse.ArgumentParser:
    """The command's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m one_fast.analyze",
        description="Model analysis of a trained run: robustness to weight perturbation and "
                    "the agreement of its members (JSON + PNG each).")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of one_fast.train")
    parser.add_argument("--data-dir", default=None, help="where the dataset is (default: the "
                        "run's --data-dir)")
    parser.add_argument("--out-dir", default=None, help="default: RUN_DIR/analysis")
    parser.add_argument("--sigmas", nargs="+", type=float, default=list(DEFAULT_SIGMAS),
                        help="relative noise scales (noise rms = sigma x rms of each weight "
                             "tensor)")
    parser.add_argument("--draws", type=int, default=5, help="noise draws per nonzero sigma")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    parser.add_argument("--only", choices=("perturbation", "agreement"), default=None,
                        help="run one analysis only")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return parser


def _write_json(path: Path, payload: dict) -> None:
    text = json.dumps(payload, indent=2, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode("utf-8") + b"\n"))


def analyze(args: argparse.Namespace) -> dict[str, Path]:
    """Run the analyses asked for; returns the files written."""
    run = load_analysed_run(args.run_dir, torch.device(args.device), data_dir=args.data_dir)
    out_dir = Path(args.out_dir) if args.out_dir else run.run_dir / "analysis"
    method = run.config.method
    logged = None if run.test_acc is None else 100.0 * (1.0 - run.test_acc["branch_0"])
    about = {"run_dir": str(run.run_dir), "epoch": run.epoch, "method": method,
             "members": None, "run_test_error_percent": logged}
    title = f"{run.run_dir} ({method}, epoch {run.epoch})"
    print(f"{run.run_dir}: {provenance_line(run.run_dir)}")

    def evaluate():
        return member_outputs(run.model, run.test_loader.eval_batches(), run.amp_dtype)

    written: dict[str, Path] = {}
    baseline = evaluate()
    about["members"] = baseline.logits.shape[1]
    if args.only in (None, "perturbation"):
        results = perturbation_robustness(run.model, evaluate, args.sigmas, args.draws,
                                          args.seed, method)
        _write_json(out_dir / "perturbation.json", {
            **about, "noise": NOISE_MODEL, "draws": args.draws, "seed": args.seed,
            "results": results})
        written["perturbation.json"] = out_dir / "perturbation.json"
        written["perturbation.png"] = plot_perturbation(
            results, out_dir / "perturbation.png", title)
        for r in results:
            s, e = r["student_error_percent"], r["ensemble_error_percent"]
            print(f"sigma {r['sigma']:<6g} student error {s['mean']:6.2f} ± {s['std']:.2f} %"
                  + (f"   ensemble {e['mean']:6.2f} ± {e['std']:.2f} %" if e else ""))
    if args.only in (None, "agreement"):
        if about["members"] < 2:
            print(f"agreement: skipped, the run has {about['members']} member (needs >= 2)")
        else:
            result = branch_agreement(baseline)
            _write_json(out_dir / "agreement.json", {**about, **result})
            written["agreement.json"] = out_dir / "agreement.json"
            written["agreement.png"] = plot_agreement(result, out_dir / "agreement.png", title)
            print(f"agreement: mean pairwise disagreement "
                  f"{100 * result['mean_pairwise_disagreement']:.2f} %, correlation "
                  f"{result['mean_pairwise_correlation']:.4f}, probability variance "
                  f"{result['probability_variance']:.3g}")
    for path in written.values():
        print(f"wrote {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; every expected failure is one ``error: ...`` line."""
    args = build_parser().parse_args(argv)
    try:
        analyze(args)
    except (FileNotFoundError, CheckpointError, DatasetNotFoundError, DaliNotInstalledError,
            ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
